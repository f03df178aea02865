"""The OpenAPI document states what the server enforces, so schema-driven clients and fuzzers predict it.

FastAPI's document, from the request models, says less than the server checks: it allows empty strings and
lists, any number of texts, and lists only a 422 whose body (``{"detail": [...]}``) is not what the server
sends. ``document_limits`` adds, from the running config: non-empty strings and lists, at most
``max_texts_per_request`` inputs, the [MASK] a fill-mask text needs, the one ``dimensions`` value accepted,
every error status each operation can answer with the API's one error schema, and the bearer scheme when an
API key is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bertkit.serve.errors import ERROR_SCHEMA

if TYPE_CHECKING:
    from bertkit.serve.config import ServerConfig
    from bertkit.serve.service import Service

REQUESTS = {"EmbeddingsRequest": None, "ClassifyRequest": None, "NerRequest": r"\S", "FillMaskRequest": r"\[MASK\]"}

_POST_ERRORS = {
    "400": "the body is not valid JSON (the reason is given), or the model cannot serve this endpoint",
    "404": "`model` names a model this server does not serve",
    "408": "the request body did not arrive within the body timeout",
    "413": "the body, the number of inputs or the request's tokens are over the server's limits",
    "415": "the Content-Type is not application/json",
    "422": "a field is missing, of the wrong type, or has a value the model cannot take (e.g. an empty string)",
    "503": "the server is overloaded (queue full), the request timed out, or the server is shutting down; "
           "see the Retry-After header",
}


def document_limits(app: FastAPI, config: ServerConfig, service: Service) -> dict[str, Any]:
    """The app's OpenAPI document with the server's limits and error responses (built once, then cached)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body; the server never sends it
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    for name, pattern in REQUESTS.items():
        if name not in schemas:
            continue
        props = schemas[name].get("properties", {})
        for field in ("input", "text_pair"):
            if field in props:
                _non_empty(props[field], config.max_texts_per_request, pattern if field == "input" else None)
        if name == "EmbeddingsRequest" and "dimensions" in props:
            dim = getattr(service, "embedding_dim", service.hidden_size)
            props["dimensions"]["anyOf"] = [{"type": "integer", "enum": [dim]}, {"type": "null"}]
    if config.api_key is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                    "description": "the server's --api-key"}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        protected = config.api_key is not None and not any(
            path == p or path.startswith(p.rstrip("/") + "/") for p in config.open_paths)
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            codes = dict(_POST_ERRORS) if method == "post" else {}
            if protected:
                codes["401"] = "no API key, or a wrong one (Authorization: Bearer KEY)"
                op["security"] = [{"bearer": []}]
            for code, description in sorted(codes.items()):
                responses[code] = {"description": description, "content": error}
                if code == "503":
                    responses[code]["headers"] = {"Retry-After": {
                        "description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
    app.openapi_schema = schema
    return schema


def _non_empty(node: dict[str, Any], max_items: int | None, pattern: str | None) -> None:
    """Strings get minLength 1 (and ``pattern`` at the top level), lists minItems 1; the outermost list
    maxItems ``max_items``; nested lists (NER word lists) recurse without a count limit."""
    for option in node.get("anyOf", []):
        _non_empty(option, max_items, pattern)
    if node.get("type") == "string":
        node["minLength"] = 1
        if pattern is not None:
            node["pattern"] = pattern
    elif node.get("type") == "array":
        node["minItems"] = 1
        if max_items is not None:
            node["maxItems"] = max_items
        if isinstance(node.get("items"), dict):
            _non_empty(node["items"], None, pattern if node["items"].get("type") == "string" else None)
