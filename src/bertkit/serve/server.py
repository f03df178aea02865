"""Running the app under uvicorn with the server's connection limits and a clean shutdown.

Connections (``server_options(app)``, for ``uvicorn.run`` / ``uvicorn.Config``; the limits are the app's
``ServerConfig``): a client must send a request's headers within ``header_timeout_s`` of connecting (or of its
previous response), else it gets a 408 and the connection is closed (uvicorn alone keeps a half-sent request's
connection open for ever); an idle keep-alive connection is closed after ``keep_alive_s``; the body's deadline
(``body_timeout_s``) is enforced by the app itself.

Shutdown (SIGTERM, Ctrl-C): uvicorn stops accepting connections and waits for the requests in flight. The app
must learn of it at once, not when uvicorn is done waiting, so ``drain_on_signals`` (called by the app's
lifespan) chains the server's signal handlers with ``app.state.begin_shutdown``: the batchers refuse new work
with a 503, keep running what is queued for the grace period, and answer what is left with a JSON 503 when it
ends. uvicorn's own deadline is set ``SHUTDOWN_MARGIN_S`` later, so it never has to cancel a request (which
answers a plain-text 500 and logs a traceback).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from bertkit.serve.errors import error_bytes

log = logging.getLogger("bertkit")

SHUTDOWN_MARGIN_S = 10  # uvicorn's deadline after the app's grace period: time for the last responses to go out
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def drain_on_signals(begin_shutdown: Callable[[], None]) -> Callable[[], None]:
    """Make SIGINT/SIGTERM call ``begin_shutdown`` before the handler the server installed; returns a function
    that puts the server's handlers back. Only where the server handles signals (uvicorn does, in the main
    thread, before the app starts); elsewhere it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed: dict[int, Any] = {}
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue  # nobody shuts down gracefully on this signal: leave it

        def handler(signum: int, frame: Any, previous: Callable[..., Any] = previous) -> None:
            begin_shutdown()
            previous(signum, frame)
        signal.signal(sig, handler)
        installed[sig] = (previous, handler)

    def restore() -> None:
        for sig, (previous, handler) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)
    return restore


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with a deadline for each request's headers; None without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a request is closed too

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # the bytes of a new request's head
                self._arm()
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served (pipelining): its own deadlines apply
            self.transport.write(error_bytes(408, f"the request's headers did not arrive within "
                                                  f"{header_timeout_s:g} s", "header_timeout"))
            self.transport.close()

    return HeaderTimeoutProtocol


def server_options(app: FastAPI) -> dict[str, Any]:
    """uvicorn settings for ``app`` from its ServerConfig: the header deadline, the keep-alive limit, and a
    graceful-shutdown deadline ``SHUTDOWN_MARGIN_S`` after the app's grace period."""
    config = app.state.config
    protocol = header_timeout_protocol(config.header_timeout_s)
    if protocol is None:
        log.warning("httptools is not installed: request headers have no deadline (install uvicorn[standard])")
    return {"http": protocol or "auto", "timeout_keep_alive": config.keep_alive_s,
            "timeout_graceful_shutdown": round(config.shutdown_grace_s + SHUTDOWN_MARGIN_S)}
