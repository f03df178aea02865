"""Joining a Ray cluster, for Ray Data embedding (``ray_data.py``) and the server's Ray Serve replicas
(``bertkit.serve.ray_serve``): one address check, one connect.

``ray.init(address=...)`` on a dead address does not fail: Ray's GCS client retries (measured here: still waiting
after 2.5 minutes on a closed local port), so a mistyped ``--ray-address`` would look like a hang. ``check_address``
answers first with a TCP connect under a timeout: milliseconds for a closed port or an unknown host,
``CONNECT_TIMEOUT_S`` for a dropped one. ``ray`` is imported only here and only when used: it is the optional extra
``bertkit[ray]``.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from typing import Any

from bertkit.errors import BertkitError, ConfigError

log = logging.getLogger("bertkit")

INSTALL = "pip install 'bertkit[ray]'"
GCS_PORT = 6379  # `ray start --head`'s default port
CONNECT_TIMEOUT_S = 5.0


def require_ray(module: str = "ray.data") -> Any:
    """``module`` (``ray.data``, ``ray.serve``), or a BertkitError that says how to install it: Ray alone, without
    its [data] / [serve] extras, lacks them."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BertkitError(f"this needs {module}, which is not installed ({e}); install it with: {INSTALL}") from None


def gcs_endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) a Ray address connects to: "HOST[:PORT]" (the GCS, port 6379 by default) or
    "ray://HOST:PORT" (Ray Client); None for "auto" / "local", which Ray resolves itself."""
    address = address.strip()
    if address in ("auto", "local"):
        return None
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or "]" in port:  # no port, or a bare IPv6 address such as [::1]
        host, port = hostport, str(GCS_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address {address!r} is not HOST:PORT (e.g. head-node:6379, the address "
                          f"`ray start --head` prints, or ray://HOST:10001)")
    return host, int(port)


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout_s`` if nothing listens at a Ray address."""
    endpoint = gcs_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:  # refused, unreachable, unknown host, timed out
        reason = f"no answer within {timeout_s:g} s" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise BertkitError(f"no Ray cluster at {address} ({host}:{port}: {reason}); start one with `ray start "
                           f"--head` on the head node and pass the address it prints, or leave --ray-address out "
                           f"to start a local Ray instance") from None


def connect(address: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Join the Ray cluster at ``address`` (default ``$RAY_ADDRESS``; neither: start a local instance on this
    machine) unless this process is connected already. Returns True when this call connected (the caller then
    shuts Ray down when done), False when Ray was initialised before (someone else's: leave it running). A given
    address is checked even then: the caller asked for that cluster."""
    ray = require_ray("ray")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_address(address, timeout_s)
    if ray.is_initialized():
        return False
    try:  # log_to_driver off: every actor would repeat the model's load messages on our stderr
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as e:  # not a Ray GCS there, or a cluster that wants a token
        raise BertkitError(f"could not join the Ray cluster at {address}: {e}") from None
    return True
