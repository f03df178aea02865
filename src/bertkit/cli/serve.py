"""``bertkit serve [MODEL]``: an HTTP server for embeddings, classification, NER and fill-mask.

Concurrent requests are merged into engine calls (dynamic micro-batching, ``--max-batch-tokens`` /
``--max-wait-ms``; ``--no-batching`` runs one request per call). SIGTERM / Ctrl-C stop taking new
connections, let in-flight requests finish (up to 30 s), then stop.
"""

from __future__ import annotations

import argparse
import logging

from bertkit.cli.engine_args import add_engine_args, engine_from_args

log = logging.getLogger("bertkit")

GRACEFUL_SHUTDOWN_S = 30
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible /v1/embeddings, /v1/classify, "
                                     "/v1/ner, /v1/fill-mask, /metrics)")
    p.add_argument("model", nargs="?", default=None,
                   help="built-in name or local HF / fine-tuned directory (default all-MiniLM-L6-v2)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 to listen on all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the oldest queued request waits for others to join its batch")
    p.add_argument("--no-batching", action="store_true", help="one request per engine call (no merging)")
    p.add_argument("--max-texts", type=int, default=256, help="most texts in one request (more: 413)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (more: 413)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="uvicorn's log level")
    add_engine_args(p)  # --dtype --int8 --backend --threads --max-batch-tokens (also the merge budget) --batch-size
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from bertkit.serve import ServerConfig, create_app, load_service

    if args.max_texts < 1 or args.max_body_bytes < 1 or not 0 < args.port < 65536:
        raise ValueError("--max-texts and --max-body-bytes must be >= 1 and --port in 1..65535")
    options = engine_from_args(args)
    config = ServerConfig(max_texts_per_request=args.max_texts, max_body_bytes=args.max_body_bytes,
                          batching=not args.no_batching, max_batch_tokens=args.max_batch_tokens,
                          max_wait_ms=args.max_wait_ms)
    service = load_service(args.model, options)
    app = create_app(service, config)
    log.info("serving %s", service.describe())
    log.info("engine: %s", options.describe())
    log.info("batching: %s", f"merge up to {config.max_batch_tokens} tokens, wait <= {config.max_wait_ms} ms"
             if config.batching else "off (one request per engine call)")
    log.info("listening on http://%s:%d (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return 0
