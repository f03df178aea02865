"""``bertkit serve``: an HTTP server (FastAPI + uvicorn) for embeddings, classification, NER and fill-mask,
with dynamic micro-batching of concurrent requests."""

from bertkit.serve.app import ServerConfig, create_app
from bertkit.serve.batcher import MicroBatcher
from bertkit.serve.service import Service, load_service

__all__ = ["MicroBatcher", "ServerConfig", "Service", "create_app", "load_service"]
