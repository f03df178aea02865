"""``bertkit serve [MODEL]``: an HTTP server for embeddings, classification, NER and fill-mask.

Concurrent requests are merged into engine calls (dynamic micro-batching, ``--max-batch-tokens`` /
``--max-wait-ms``; ``--no-batching`` runs one request per call); large requests run in slices that take turns
with other requests' (``--slice-tokens``). Every limit is a flag (docs/limits.md, Server limits). SIGTERM /
Ctrl-C stop taking new connections, let queued work finish for ``--shutdown-grace`` seconds, answer the rest with
a JSON 503, then stop. ``--api-key`` (or ``$BERTKIT_API_KEY``) requires ``Authorization: Bearer KEY``.

``--ray --replicas N [--ray-address HEAD:6379]``: the same app as N Ray Serve replicas, each with its own
micro-batcher and ``--threads`` torch threads (default 1), behind Ray Serve's proxy on ``--host:--port`` of every
node with a replica (``serve/ray_serve.py``). SIGTERM / Ctrl-C delete the application (each replica finishes the
requests it holds) and shut Ray Serve down.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import signal
import threading

from bertkit.cli.engine_args import add_engine_args, engine_from_args
from bertkit.cli.long_input_args import add_long_input_args, long_input_kwargs
from bertkit.inference.engine import EngineOptions
from bertkit.serve.config import ServerConfig

log = logging.getLogger("bertkit")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
API_KEY_ENV = "BERTKIT_API_KEY"


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
    c = ServerConfig
    p.add_argument("--max-request-tokens", type=int, default=c.max_request_tokens,
                   help="most tokens in one request, after truncation (more: 413)")
    p.add_argument("--slice-tokens", type=int, default=c.slice_tokens,
                   help="a large request runs in slices of this many tokens, taking turns with other requests")
    p.add_argument("--max-call-ms", type=float, default=c.max_call_ms,
                   help="keep each engine call to about this long (by the measured tokens/s), so a request arriving "
                        "during one waits little for the next")
    p.add_argument("--max-queue-requests", type=int, default=c.max_queue_requests,
                   help="requests admitted at once per endpoint (more: 503 with Retry-After)")
    p.add_argument("--max-queue-tokens", type=int, default=c.max_queue_tokens,
                   help="tokens waiting at once per endpoint (more: 503 with Retry-After)")
    p.add_argument("--request-timeout", type=float, default=c.request_timeout_s, metavar="SECONDS",
                   help="a request not answered by then gets a 503 and its remaining work is dropped")
    p.add_argument("--body-timeout", type=float, default=c.body_timeout_s, metavar="SECONDS",
                   help="the whole request body must arrive within this (else 408)")
    p.add_argument("--header-timeout", type=float, default=c.header_timeout_s, metavar="SECONDS",
                   help="a request's headers must arrive within this (else 408, connection closed)")
    p.add_argument("--keep-alive", type=int, default=c.keep_alive_s, metavar="SECONDS",
                   help="close an idle keep-alive connection after this")
    p.add_argument("--shutdown-grace", type=float, default=c.shutdown_grace_s, metavar="SECONDS",
                   help="on SIGTERM, queued work may finish for this long; the rest gets a 503")
    p.add_argument("--heap-trim-interval", type=float, default=c.heap_trim_s, metavar="SECONDS",
                   help="under load, hand free heap memory back to the OS at most this often (0: never)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key; the "
                        "variable keeps the key out of the process list)")
    p.add_argument("--open-paths", default=",".join(c.open_paths), metavar="PATHS",
                   help="comma-separated paths that need no key (default: %(default)s; '' protects all)")
    p.add_argument("--accept-any-model", action="store_true",
                   help='accept any "model" in requests (default: a name this server does not serve is a 404)')
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="uvicorn's log level")
    r = p.add_argument_group("Ray Serve (pip install 'bertkit[ray]')")
    r.add_argument("--ray", action="store_true",
                   help="serve as replicas on Ray Serve: each replica loads the model and batches on its own; Ray's "
                        "proxy listens on --host:--port on every node with a replica")
    r.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="replicas with --ray (default 1); each reserves --threads CPUs (default 1)")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="the cluster to join, e.g. head-node:6379 (`ray start --head` prints it; default $RAY_ADDRESS, "
                        "else a local Ray instance on this machine)")
    add_long_input_args(p)  # applies to /v1/embeddings, /v1/classify, /v1/ner
    add_engine_args(p)  # --dtype --int8 --backend --threads --max-batch-tokens (also the merge budget) --batch-size
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from bertkit.serve import create_app, load_service
    from bertkit.serve.server import server_options

    if args.max_texts < 1 or args.max_body_bytes < 1 or not 0 < args.port < 65536:
        raise ValueError("--max-texts and --max-body-bytes must be >= 1 and --port in 1..65535")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    options = engine_from_args(args)
    config = ServerConfig(max_texts_per_request=args.max_texts, max_body_bytes=args.max_body_bytes,
                          batching=not args.no_batching, max_batch_tokens=args.max_batch_tokens,
                          max_wait_ms=args.max_wait_ms, max_request_tokens=args.max_request_tokens,
                          slice_tokens=args.slice_tokens, max_call_ms=args.max_call_ms,
                          max_queue_requests=args.max_queue_requests,
                          max_queue_tokens=args.max_queue_tokens, request_timeout_s=args.request_timeout,
                          body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                          keep_alive_s=args.keep_alive, heap_trim_s=args.heap_trim_interval,
                          shutdown_grace_s=args.shutdown_grace, api_key=api_key,
                          open_paths=tuple(p.strip() for p in args.open_paths.split(",") if p.strip()),
                          accept_any_model=args.accept_any_model)  # checked before the model loads
    if not args.ray and (args.replicas is not None or args.ray_address is not None):
        raise ValueError("--replicas and --ray-address serve on Ray Serve: add --ray")
    if args.ray:
        return run_on_ray(args, config, options)
    service = load_service(args.model, options, **long_input_kwargs(args))
    app = create_app(service, config)
    log.info("serving %s", service.describe())
    log.info("engine: %s", options.describe())
    log.info("batching: %s", f"merge up to {config.max_batch_tokens} tokens, wait <= {config.max_wait_ms} ms, "
             f"slices of {config.slice_tokens} tokens, calls of ~{config.max_call_ms:g} ms" if config.batching else
             "off (one request per engine call)")
    log.info("limits: %d texts, %d tokens and %d bytes a request; queue %d requests / %d tokens; timeouts: "
             "request %g s, body %g s, headers %g s, idle %d s; shutdown grace %g s", config.max_texts_per_request,
             config.max_request_tokens, config.max_body_bytes, config.max_queue_requests, config.max_queue_tokens,
             config.request_timeout_s, config.body_timeout_s, config.header_timeout_s, config.keep_alive_s,
             config.shutdown_grace_s)
    log_access(args.host, config)
    log.info("listening on http://%s:%d (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                **server_options(app))
    return 0


def run_on_ray(args: argparse.Namespace, config: ServerConfig, options: EngineOptions) -> int:
    """``serve --ray``: deploy the app as ``--replicas`` Ray Serve replicas and serve until SIGINT / SIGTERM."""
    from bertkit.distributed.ray_cluster import connect
    from bertkit.loader import inspect
    from bertkit.serve import ray_serve

    replicas = 1 if args.replicas is None else args.replicas
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    inspect(args.model)  # a model that is not there fails here, once, not in every replica
    # torch's default is every core of the node, for each replica: one thread each unless told
    options = dataclasses.replace(options, threads=options.threads or 1)
    connected = connect(args.ray_address)  # an unreachable address fails within seconds
    local = connected and not (args.ray_address or os.environ.get("RAY_ADDRESS"))  # a new instance, this machine only
    ray_serve.check_capacity(replicas, options.threads, local)
    app = ray_serve.deployment(args.model, replicas=replicas, config=config, options=options)
    log.info("deploying %s on Ray Serve: %d replica(s) of %d thread(s) and as many CPUs each",
             args.model or "the default model", replicas, options.threads)
    log.info("engine: %s", options.describe())
    log_access(args.host, config)
    ray_serve.start(app, host=args.host, port=args.port, keep_alive_s=config.keep_alive_s)
    log.info("listening on http://%s:%d on every node with a replica (API docs at /docs; Ctrl-C stops)", args.host,
             args.port)
    try:
        wait_for_stop()
    finally:
        log.info("stopping: each replica finishes the requests it holds (up to %g s), then Ray Serve shuts down",
                 config.shutdown_grace_s)
        ray_serve.stop()
    return 0


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (the replicas serve meanwhile, in Ray's processes)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):  # a timed wait: the main thread runs the signal handlers between waits
            pass
    finally:
        for sig, handler in previous.items():  # a second Ctrl-C interrupts the shutdown itself
            signal.signal(sig, handler)


def log_access(host: str, config: ServerConfig) -> None:
    """Say who may use the server: a warning when it listens beyond this machine without a key."""
    if config.api_key is None:
        if not is_loopback(host):
            log.warning("listening on %s without an API key: anyone who can reach this address can use the "
                        "server; set --api-key or $%s, or bind to 127.0.0.1", host, API_KEY_ENV)
    else:
        log.info("API key required (Authorization: Bearer ...) except on %s", ", ".join(config.open_paths) or
                 "no path")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
