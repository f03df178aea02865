"""The HTTP API: ``create_app(service, config)`` -> a FastAPI app.

POST /v1/embeddings  OpenAI-compatible sentence embeddings (float lists or base64 little-endian float32)
POST /v1/classify    sequence classification / multilabel / regression, optionally of text pairs
POST /v1/ner         word tags and entity spans
POST /v1/fill-mask   top-k fillers of each [MASK]
GET  /healthz, /metrics (Prometheus), /docs (OpenAPI UI)

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: bad input is a 4xx that
says what is wrong and where, never a 500; an unexpected failure is a 500 whose body holds no traceback
(it is logged). Bodies over ``max_body_bytes`` are refused (413) before any parsing, by Content-Length or
by counting the bytes of a chunked body.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertkit.errors import BertkitError
from bertkit.serve.batcher import BatcherClosed, MicroBatcher
from bertkit.serve.metrics import Metrics
from bertkit.serve.service import Service

log = logging.getLogger("bertkit")

ENDPOINTS = ("/v1/embeddings", "/v1/classify", "/v1/ner", "/v1/fill-mask", "/healthz", "/metrics")


@dataclass
class ServerConfig:
    max_texts_per_request: int = 256
    max_body_bytes: int = 1 << 20
    batching: bool = True  # False: one request per engine call (the baseline batching is measured against)
    max_batch_tokens: int = 8192  # merge requests up to this many tokens per engine call
    max_wait_ms: float = 5.0  # how long the oldest queued request may wait for others to join it


# ---- errors -------------------------------------------------------------------------------------
class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """pydantic's first error as (message, param), param a dotted path into the body such as "input.2"."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    if param and not message.startswith(loc[0]):  # our own messages already say where
        message = f"{param}: {message}"
    if first.get("type") == "json_invalid":
        message, param = f"body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})", None
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message, param


# ---- request schemas ----------------------------------------------------------------------------
def _check_texts(value: Any, name: str = "input", words: bool = False) -> Any:
    """A non-empty string or a non-empty list of them (NER: also of word lists), with messages that say where."""
    if isinstance(value, str):
        _check_text(value, name)
        return value
    if not isinstance(value, list) or not value:
        raise PydanticCustomError("invalid_input", "{name} must be a non-empty string or a non-empty list of strings",
                                  {"name": name})
    for i, x in enumerate(value):
        where = f"{name}[{i}]"
        if words and isinstance(x, list):
            if not x:
                raise PydanticCustomError("invalid_input", "{name} is an empty word list", {"name": where})
            for j, w in enumerate(x):
                _check_text(w, f"{where}[{j}]")
        elif isinstance(x, int) and not isinstance(x, bool):
            raise PydanticCustomError("invalid_input", "token-id input is not supported, only strings")
        else:
            _check_text(x, where)
    return value


def _check_text(text: Any, name: str) -> None:
    if not isinstance(text, str):
        raise PydanticCustomError("invalid_input", "{name} is {kind}, expected a string",
                                  {"name": name, "kind": type(text).__name__})
    if not text:
        raise PydanticCustomError("empty_input", "{name} is an empty string", {"name": name})
    try:  # JSON can carry lone surrogates; the tokenizer cannot
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("invalid_input", "{name} is not valid unicode (a lone surrogate)",
                                  {"name": name}) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="informational: the server serves one model")
    truncate: bool = Field(True, description="cut texts to the model's max_length (false: such a text is a 422)")


class EmbeddingsRequest(_Body):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must equal the model's hidden size if given")
    user: str | None = None
    normalize: bool = Field(True, description="L2-normalize each vector")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _check_texts(value)


class ClassifyRequest(_Body):
    input: str | list[str]
    text_pair: str | list[str] | None = Field(None, description="second texts, the same shape as input")

    @field_validator("input", "text_pair", mode="before")
    @classmethod
    def _input(cls, value: Any, info: ValidationInfo) -> Any:
        return value if value is None and info.field_name == "text_pair" else _check_texts(value, info.field_name)


class NerRequest(_Body):
    input: str | list[str] | list[list[str]] = Field(
        description="a text (split on whitespace), a list of texts, or a list of word lists")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _check_texts(value, words=True)


class FillMaskRequest(_Body):
    input: str | list[str]
    top_k: Annotated[int, Field(ge=1, le=50)] = 5

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _check_texts(value)


# ---- middleware ---------------------------------------------------------------------------------
class BodyLimit:
    """Refuse (413) a body over ``max_bytes`` before the app parses it: by Content-Length, else by counting
    the streamed (chunked) bytes. The body is read here, at most ``max_bytes`` of it, and replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body is larger than {self.max_bytes} bytes",
                                  code="request_too_large", headers={"Connection": "close"})
        await response(scope, receive, send)


class Observe:
    """Request metrics (count by endpoint and status, latency, in flight), and the last word on errors:
    an exception no handler took becomes a logged 500 with no traceback in its body."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"  # bounded label values
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


# ---- the app ------------------------------------------------------------------------------------
def create_app(service: Service, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    metrics = Metrics()
    runs = {"embeddings": service.embed, "classify": service.classify, "ner": service.ner,
            "fill-mask": service.fill}
    batchers = {cap: MicroBatcher(cap, runs[cap], config.max_batch_tokens, config.max_wait_ms,
                                  enabled=config.batching, metrics=metrics)
                for cap in service.capabilities}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has let in-flight requests finish (up to timeout_graceful_shutdown); drain what is left
        for b in batchers.values():
            await run_in_threadpool(b.close)

    app = FastAPI(title="bertkit", summary=f"BERT encoder server: {service.name}", lifespan=lifespan)
    app.state.service, app.state.config, app.state.metrics, app.state.batchers = service, config, metrics, batchers
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)  # added last: outermost, so it also sees the 413s

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(422, message, param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    # ---- helpers shared by the endpoints ----
    def texts_of(value: str | list[Any]) -> list[Any]:
        items = [value] if isinstance(value, str) else list(value)
        if len(items) > config.max_texts_per_request:
            raise APIError(413, f"{len(items)} inputs in one request; at most {config.max_texts_per_request}",
                           "input", "too_many_inputs")
        return items

    def require(capability: str) -> None:
        if (reason := service.why_not(capability)) is not None:
            raise APIError(400, reason, code="unsupported_endpoint")

    def fit(counts: list[int], truncate: bool, single: bool) -> list[int]:
        """Untruncated token counts -> the counts the model sees; a 422 for a too-long text unless truncating."""
        limit = service.max_length
        if not truncate:
            for i, n in enumerate(counts):
                if n > limit:
                    where = "input" if single else f"input[{i}]"
                    raise APIError(422, f"{where} has {n} tokens, more than the model's max_length of {limit}; "
                                        f"shorten it or send truncate=true", where, "text_too_long")
        return [min(n, limit) for n in counts]

    async def infer(capability: str, items: Sequence[Any], counts: list[int], **params: Any) -> list[Any]:
        try:
            return await batchers[capability].submit(items, sum(counts), **params)
        except BatcherClosed as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down") from None

    def usage(counts: list[int]) -> dict[str, int]:
        return {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}

    # ---- endpoints ----
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        """Sentence embeddings (OpenAI's /v1/embeddings)."""
        texts = texts_of(body.input)
        if body.dimensions is not None and body.dimensions != service.hidden_size:
            raise APIError(422, f"dimensions must be {service.hidden_size} (this model's size) if given, got "
                                f"{body.dimensions}", "dimensions", "invalid_value")
        counts = fit(await run_in_threadpool(service.count_tokens, texts), body.truncate, isinstance(body.input, str))
        vectors = await infer("embeddings", texts, counts, normalize=body.normalize)
        if body.encoding_format == "base64":
            data = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = [np.asarray(v, dtype=np.float32).tolist() for v in vectors]
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": e}
                                           for i, e in enumerate(data)],
                "model": service.name, "usage": usage(counts)}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        """Labels and probabilities (multilabel: "labels"; regression: "score") of texts or text pairs."""
        require("classify")
        texts = texts_of(body.input)
        pairs = None if body.text_pair is None else texts_of(body.text_pair)
        if pairs is not None and (isinstance(body.input, str) != isinstance(body.text_pair, str)
                                  or len(pairs) != len(texts)):
            raise APIError(422, f"text_pair must have the shape of input ({len(texts)} texts), got "
                                f"{len(pairs)}", "text_pair", "invalid_value")
        if pairs is None and service.task_model is not None and service.task_model.task == "pair-classification":
            raise APIError(422, f"model {service.name} classifies text pairs: send text_pair", "text_pair",
                           "invalid_value")
        counts = fit(await run_in_threadpool(service.count_tokens, texts, pairs), body.truncate,
                     isinstance(body.input, str))
        items = list(zip(texts, pairs or [None] * len(texts), strict=True))
        preds = await infer("classify", items, counts, paired=pairs is not None)
        return {"data": [{"index": i, **p} for i, p in enumerate(preds)], "model": service.name,
                "usage": usage(counts)}

    @app.post("/v1/ner")
    async def ner(body: NerRequest) -> dict[str, Any]:
        """Per-word tags and entity spans ({"type", "start", "end" (exclusive, in words), "text"})."""
        require("ner")
        words = [x.split() if isinstance(x, str) else x for x in texts_of(body.input)]
        for i, w in enumerate(words):
            if not w:
                raise APIError(422, f"input[{i}] has no words", "input", "invalid_value")
        counts = fit(await run_in_threadpool(service.count_word_tokens, words), body.truncate,
                     isinstance(body.input, str))
        preds = await infer("ner", words, counts)
        return {"data": [{"index": i, **p} for i, p in enumerate(preds)], "model": service.name,
                "usage": usage(counts)}

    @app.post("/v1/fill-mask")
    async def fill_mask(body: FillMaskRequest) -> dict[str, Any]:
        """For each text, for each [MASK] left to right, the top_k {"token", "token_id", "score", "sequence"}."""
        require("fill-mask")
        texts = texts_of(body.input)
        counts = fit(await run_in_threadpool(service.count_tokens, texts), body.truncate, isinstance(body.input, str))
        assert service.fill_mask is not None
        try:  # every text must keep a [MASK] within max_length; the error names the text
            await run_in_threadpool(service.fill_mask.tokenize, texts)
        except BertkitError as e:
            raise APIError(422, str(e), "input", "invalid_value") from None
        preds = await infer("fill-mask", texts, counts, top_k=body.top_k)
        return {"data": [{"index": i, "predictions": p} for i, p in enumerate(preds)], "model": service.name,
                "usage": usage(counts)}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": service.name, "capabilities": service.capabilities}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
