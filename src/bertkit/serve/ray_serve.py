"""The server on Ray Serve: the app of ``bertkit serve`` (the same endpoints, limits, errors and micro-batching) as
N replicas behind Ray Serve's HTTP proxy, on one machine or a cluster.

    from ray import serve
    from bertkit.distributed.ray_cluster import connect
    from bertkit.serve.ray_serve import deployment

    connect("head:6379")                              # or connect(): a local Ray instance
    serve.run(deployment("all-MiniLM-L6-v2", replicas=4), name="bertkit", route_prefix="/")

Each replica is a Ray actor that loads the model and builds the app once, when it starts (``Replica``), so the
micro-batcher lives inside the replica and merges the requests the proxy routes to it. A replica reserves
``num_cpus`` (default: its torch threads) and runs that many intra-op threads. It takes up to
``max_queue_requests`` requests at once (Ray Serve's ``max_ongoing_requests``; its default of 5 would starve the
batcher), so its batcher sees concurrent requests and its queue bounds (503 + Retry-After) apply as on one server.
Every response carries ``X-Bertkit-Replica``: the replica that answered.

Shutdown: Ray Serve stops routing to a replica that is stopping, waits for its requests in flight, then runs the
app's lifespan shutdown, which finishes the batchers' queued work. ``graceful_shutdown_timeout_s`` is the app's
grace period plus ``SHUTDOWN_MARGIN_S``, as uvicorn's deadline is on one server.

``ray`` is imported only when used: without it every entry point says to ``pip install 'bertkit[ray]'``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertkit.distributed.ray_cluster import require_ray
from bertkit.errors import BertkitError
from bertkit.inference.engine import EngineOptions
from bertkit.serve.app import create_app
from bertkit.serve.config import ServerConfig
from bertkit.serve.server import SHUTDOWN_MARGIN_S
from bertkit.serve.service import load_service

if TYPE_CHECKING:  # annotations only: ray is an optional extra, imported when used
    from ray.serve import Application

log = logging.getLogger("bertkit")

APP_NAME = "bertkit"
REPLICA_HEADER = "X-Bertkit-Replica"


def require_serve() -> Any:
    """The ``ray.serve`` module, or a BertkitError that says how to install it."""
    return require_ray("ray.serve")


# ---- the cluster --------------------------------------------------------------------------------
def check_capacity(replicas: int, num_cpus: float, local: bool) -> None:
    """Replicas that cannot all fit wait for resources for ever: refuse on a local instance (it will not grow);
    on a cluster only warn (an autoscaler or `ray start --address` on another node may add CPUs)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    need = replicas * num_cpus
    if need <= total:
        return
    message = (f"{replicas} replicas of {num_cpus:g} CPUs need {need:g} CPUs, the cluster has {total:g}; lower "
               f"--replicas or --threads, or add nodes (`ray start --address HEAD:6379` on each)")
    if local:
        raise BertkitError(message)
    log.warning("%s; the missing replicas wait until CPUs join", message)


# ---- the deployment -----------------------------------------------------------------------------
class ReplicaHeader:
    """Names the replica that answered in every response (``X-Bertkit-Replica``): a client, a load test or a
    log line can tell the replicas apart."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)
        await self.app(scope, receive, send_named)


class Replica:
    """One Ray Serve replica: loads the model and builds the app once, in the replica's own process. Wrapped by
    ``serve.ingress()`` (no app: Ray Serve asks ``__serve_build_asgi_app__`` for it after ``__init__``), it runs
    the app's lifespan, so the batchers start in the replica and are closed when it stops."""

    def __init__(self, model: str | None, config: ServerConfig, options: EngineOptions) -> None:
        from ray import serve

        replica = serve.get_replica_context().replica_id.unique_id
        self.service = load_service(model, options)  # the engine sets torch's threads from options.threads
        # not self.app: Ray Serve's wrapper class has a read-only property of that name
        self.api = create_app(self.service, config)
        self.api.add_middleware(ReplicaHeader, replica=replica)  # added last: outermost, on every response
        log.info("replica %s serving %s (%s)", replica, self.service.describe(), options.describe())

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self.api


def deployment(model: str | None = None, *, replicas: int = 1, config: ServerConfig | None = None,
               options: EngineOptions | None = None, num_cpus: float | None = None, name: str = APP_NAME,
               ray_actor_options: dict[str, Any] | None = None) -> Application:
    """A Ray Serve application (for ``serve.run``) of ``replicas`` copies of the ``bertkit serve`` app.

    model: a built-in name or a model directory, at the same path on every node that runs a replica.
    options.threads: torch threads per replica (default 1); num_cpus: the CPUs each replica reserves (default
    those threads; a fraction packs replicas onto fewer cores). ray_actor_options: more Ray resources per replica
    (e.g. {"num_gpus": 1}), merged over {"num_cpus": num_cpus}.
    """
    serve = require_serve()
    config = config or ServerConfig()
    options = options or EngineOptions()
    if options.threads is None:  # torch's default is every core of the node, for each replica: oversubscribed
        options = dataclasses.replace(options, threads=1)
    if replicas < 1:
        raise BertkitError(f"replicas must be >= 1, got {replicas}")
    num_cpus = float(options.threads) if num_cpus is None else num_cpus
    if num_cpus <= 0:
        raise BertkitError(f"num_cpus must be > 0, got {num_cpus}")
    ingress = serve.ingress()(Replica)
    replica = serve.deployment(
        ingress, name=name, num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, **(ray_actor_options or {})},
        max_ongoing_requests=config.max_queue_requests,  # the batcher's own bound applies inside the replica
        graceful_shutdown_timeout_s=config.shutdown_grace_s + SHUTDOWN_MARGIN_S)
    return replica.bind(model, config, options)


def start(app: Application, *, host: str = "127.0.0.1", port: int = 8000, keep_alive_s: int | None = None,
          name: str = APP_NAME, route_prefix: str = "/") -> None:
    """Start Ray Serve's HTTP proxies (one on every node with a replica, each on ``host:port``) and deploy
    ``app``; returns when every replica is up. A replica that fails to start is a BertkitError with its reason."""
    serve = require_serve()
    http: dict[str, Any] = {"host": host, "port": port}
    if keep_alive_s is not None:
        http["keep_alive_timeout_s"] = keep_alive_s
    serve.start(proxy_location="EveryNode", http_options=http)  # ignored if Serve already runs on the cluster
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as e:  # Ray Serve's DEPLOY_FAILED
        reason = replica_error(name) or str(e)
        stop(name)
        raise BertkitError(f"the Ray Serve application {name!r} failed to start: {reason}") from None


def replica_error(name: str) -> str | None:
    """The error a failed replica raised, from its deployment's status (Ray's own message says only "Failed to
    update the deployments"): the traceback's last line, such as "CheckpointError: /no/model: ...". """
    serve = require_serve()
    app = serve.status().applications.get(name)
    for status in (app.deployments.values() if app is not None else ()):
        lines = [x.strip() for x in status.message.splitlines() if x.strip()]
        if lines:
            return lines[-1]
    return None


def stop(name: str = APP_NAME) -> None:
    """Delete the application ``name`` (its replicas finish their requests first), and shut Ray Serve down if
    nothing else runs on it: a shared cluster's other applications keep running."""
    serve = require_serve()
    serve.delete(name)
    if not serve.status().applications:
        serve.shutdown()
