"""The ASGI layers in front of the endpoints, outermost first:

Observe     request metrics, and the last word on errors (an unhandled exception is a logged 500, no traceback)
ApiKey      ``Authorization: Bearer KEY`` on every path but the open ones (401 in OpenAI's shape)
BodyCheck   the body, before FastAPI parses it: at most ``max_bytes`` (413), received within ``timeout_s``
            (408), a JSON Content-Type (415), UTF-8 JSON that parses (400 with the reason)

Each refusal has the API's error shape (``serve/errors.py``) and happens before any model work.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertkit.serve.errors import error_response
from bertkit.serve.metrics import Metrics

log = logging.getLogger("bertkit")


class BodyCheck:
    """Read the whole body here (at most ``max_bytes``, within ``timeout_s``), check it, and replay it.

    Size: refused by Content-Length before reading, else by counting a chunked body. JSON: checked for POSTs to
    ``json_paths`` only, so that invalid UTF-8, too-deep nesting and every other parse failure get one answer
    (400, code ``invalid_json``, with the reason) instead of FastAPI's mix of 400 and 422.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None,
                 json_paths: Collection[str] = ()) -> None:
        self.app, self.max_bytes, self.timeout_s, self.json_paths = app, max_bytes, timeout_s, set(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        check_json = scope["method"] == "POST" and scope["path"] in self.json_paths
        if check_json and (problem := _content_type_problem(headers.get(b"content-type"))):
            return await error_response(415, problem, code="unsupported_media_type",
                                        headers={"Connection": "close"})(scope, receive, send)
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s  # for the whole body
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await error_response(408, f"the request body was not received within {self.timeout_s:g} s",
                                            code="body_timeout", headers={"Connection": "close"})(
                    scope, receive, send)
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if check_json and (problem := _json_problem(body)):
            return await error_response(400, problem, code="invalid_json")(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body is larger than {self.max_bytes} bytes",
                                  code="request_too_large", headers={"Connection": "close"})
        await response(scope, receive, send)


def _content_type_problem(value: bytes | None) -> str | None:
    """None for a JSON media type (or none given: read as JSON, as FastAPI does), else what to say."""
    if value is None:
        return None
    media = value.split(b";")[0].strip().lower().decode("latin-1")
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    return f"Content-Type is {media or 'empty'!r}; send the body as JSON with Content-Type: application/json"


def _json_problem(body: bytes) -> str | None:
    """None if ``body`` is UTF-8 text holding one JSON value, else the reason it is not."""
    if not body.strip():
        return "the request body is empty; send a JSON object"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"the request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})"
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return f"the request body is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    except RecursionError:
        return "the request body is nested too deeply to parse (requests here are at most 3 levels deep)"
    return None


class ApiKey:
    """Require ``Authorization: Bearer <key>`` everywhere except ``open_paths`` (and what lies under them).

    The comparison is constant-time. 401s have OpenAI's shape and codes (``invalid_api_key``)."""

    def __init__(self, app: ASGIApp, key: str, open_paths: Collection[str] = ()) -> None:
        self.app, self.key, self.open_paths = app, key.encode("utf-8"), tuple(open_paths)

    def is_open(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if not auth:
            message = ("no API key given; send it as an HTTP header: Authorization: Bearer YOUR_KEY")
        elif scheme.lower() != b"bearer" or not token.strip():
            message = "the Authorization header must be 'Bearer YOUR_KEY'"
        elif not hmac.compare_digest(token.strip(), self.key):
            message = "incorrect API key provided"
        else:
            return await self.app(scope, receive, send)
        await error_response(401, message, code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


class Observe:
    """Request metrics (count by endpoint and status, latency, in flight), and the last word on errors:
    an exception no handler took becomes a logged 500 with no traceback in its body."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Collection[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, set(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"  # bounded label values
        status, started = 500, False

        async def send_observed(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        m = self.metrics
        m.inflight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            log.exception("unhandled error serving %s %s", scope.get("method"), scope["path"])
            if started:  # too late for a clean response: let the server drop the connection
                raise
            await error_response(500, "internal server error", type="server_error",
                                 code="internal_error")(scope, receive, send_observed)
        finally:
            m.inflight.dec()
            m.requests.labels(endpoint, str(status)).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - t0)
