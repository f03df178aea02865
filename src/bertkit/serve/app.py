"""The HTTP API: ``create_app(service, config)`` -> a FastAPI app.

POST /v1/embeddings  OpenAI-compatible sentence embeddings (float lists or base64 little-endian float32)
POST /v1/classify    sequence classification / multilabel / regression, optionally of text pairs
POST /v1/ner         word tags and entity spans
POST /v1/qa          extractive question answering: answer spans of questions in their contexts
POST /v1/fill-mask   top-k fillers of each [MASK]
GET  /v1/models (OpenAI's list: the one model served), /healthz, /metrics (Prometheus), /docs (OpenAPI UI)

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (``serve/errors.py``): bad input
is a 4xx that says what is wrong and where, never a 500; an unexpected failure is a 500 whose body holds no
traceback (it is logged). Every limit is a ``ServerConfig`` field (``serve/config.py``): the body's size, time
and JSON are checked before parsing (``serve/middleware.py``), a request's texts and tokens here, and the queue
and the per-request deadline in the batcher. The OpenAPI document states them (``serve/openapi.py``).
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertkit.errors import BertkitError
from bertkit.qa_model import QAModel
from bertkit.serve.batcher import BatcherClosed, MicroBatcher, QueueFull, RequestTimeout
from bertkit.serve.config import ServerConfig
from bertkit.serve.docs import add_docs
from bertkit.serve.errors import APIError, error_response
from bertkit.serve.explain import MAX_STEPS, check_explain, with_explanations
from bertkit.serve.metrics import Metrics
from bertkit.serve.middleware import ApiKey, BodyCheck, Observe
from bertkit.serve.openapi import document_limits
from bertkit.serve.server import drain_on_signals
from bertkit.serve.service import Service

log = logging.getLogger("bertkit")

API_ENDPOINTS = ("/v1/embeddings", "/v1/classify", "/v1/ner", "/v1/qa", "/v1/fill-mask")
ENDPOINTS = (*API_ENDPOINTS, "/v1/models", "/healthz", "/metrics")


# ---- errors -------------------------------------------------------------------------------------
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


def same_model(requested: str, served: str) -> bool:
    """Whether a request's "model" names the served model: the name it was served by, or the same last path
    part (so "sentence-transformers/all-MiniLM-L6-v2" names all-MiniLM-L6-v2, and "bbc" names runs/bbc)."""
    def last(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1]
    return requested == served or last(requested) == last(served)


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
    dimensions: int | None = Field(None, description="must equal the model's embedding size if given")
    user: str | None = None
    normalize: bool | None = Field(None, description="L2-normalize each vector (default: as the model does)")
    prompt_name: str | None = Field(None, description="one of the model's prompts, e.g. query or document "
                                                      "(default: the model's default prompt, if any)")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _check_texts(value)


class ClassifyRequest(_Body):
    input: str | list[str]
    text_pair: str | list[str] | None = Field(None, description="second texts, the same shape as input")
    explain: bool = Field(False, description="also return token attributions (integrated gradients); costs "
                                             "explain_steps x tokens of max_request_tokens, runs one at a time")
    explain_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = Field(None, description="default 50")
    explain_target: str | None = Field(None, description="the label to explain (default: the predicted one)")

    @field_validator("input", "text_pair", mode="before")
    @classmethod
    def _input(cls, value: Any, info: ValidationInfo) -> Any:
        return value if value is None and info.field_name == "text_pair" else _check_texts(value, info.field_name)


class NerRequest(_Body):
    input: str | list[str] | list[list[str]] = Field(
        description="a text (split on whitespace), a list of texts, or a list of word lists")
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] | None = Field(
        None, description="raw texts -> entities with character offsets, grouped as transformers' token-"
                          "classification pipeline does (default: word-level tags of whitespace-split words)")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _check_texts(value, words=True)


class QARequest(_Body):
    question: str | list[str]
    context: str | list[str] = Field(description="the texts to answer from, the same shape as question; long "
                                                 "ones are read in overlapping windows")
    top_k: Annotated[int, Field(ge=1, le=20)] = 1
    null_threshold: float | None = Field(None, description="answer \"\" when no answer beats the best span by "
                                                           "this (SQuAD v2); default: the model's")

    @field_validator("question", "context", mode="before")
    @classmethod
    def _texts(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_texts(value, info.field_name)


class FillMaskRequest(_Body):
    input: str | list[str]
    top_k: Annotated[int, Field(ge=1, le=50)] = 5

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _check_texts(value)


# ---- the app ------------------------------------------------------------------------------------
def create_app(service: Service, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    metrics = Metrics()
    runs = {"embeddings": service.embed, "classify": service.classify, "ner": service.ner, "qa": service.qa,
            "fill-mask": service.fill}
    batchers = {cap: MicroBatcher(cap, runs[cap], config.max_batch_tokens, config.max_wait_ms,
                                  enabled=config.batching, metrics=metrics, slice_tokens=config.slice_tokens,
                                  max_queue_requests=config.max_queue_requests,
                                  max_queue_tokens=config.max_queue_tokens, timeout_s=config.request_timeout_s,
                                  trim_interval_s=config.heap_trim_s or None, max_call_ms=config.max_call_ms)
                for cap in service.capabilities}

    def begin_shutdown(grace_s: float = config.shutdown_grace_s) -> None:
        """Stop taking work; what is queued may finish within ``grace_s``, the rest is answered 503 then.
        Called by the server (``serve/server.py``) as soon as it starts shutting down."""
        log.info("shutting down: finishing queued work for up to %g s, refusing new requests", grace_s)
        for b in batchers.values():
            b.begin_shutdown(grace_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        restore_signals = drain_on_signals(begin_shutdown)  # SIGTERM starts the drain at once (serve/server.py)
        try:
            yield
        finally:
            restore_signals()
        # uvicorn has let in-flight requests finish (up to timeout_graceful_shutdown); drain what is left
        for b in batchers.values():
            await run_in_threadpool(b.close)

    app = FastAPI(title="bertkit", summary=f"BERT encoder server: {service.name}", lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # /docs: add_docs below serves the UI's files itself
    app.state.service, app.state.config, app.state.metrics, app.state.batchers = service, config, metrics, batchers
    app.state.begin_shutdown = begin_shutdown
    app.add_middleware(BodyCheck, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s,
                       json_paths=API_ENDPOINTS)
    if config.api_key is not None:  # outside BodyCheck: no body is read for a client without the key
        app.add_middleware(ApiKey, key=config.api_key, open_paths=config.open_paths)
    app.add_middleware(Observe, metrics=metrics, endpoints=ENDPOINTS)  # added last: outermost, sees every refusal
    add_docs(app)
    app.openapi = lambda: document_limits(app, config, service)  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.type, exc.headers)

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

    def fit(counts: list[int], truncate: bool, single: bool, windows: bool = True) -> list[int]:
        """Untruncated token counts -> the counts the model sees (every window's when chunking); a 422 for a
        too-long text unless truncating or chunking (``windows`` False: an endpoint that never chunks)."""
        limit = service.max_length
        chunk = windows and service.long_inputs == "chunk"
        if not truncate and not chunk:
            for i, n in enumerate(counts):
                if n > limit:
                    where = "input" if single else f"input[{i}]"
                    raise APIError(422, f"{where} has {n} tokens, more than the model's max_length of {limit}; "
                                        f"shorten it or send truncate=true", where, "text_too_long")
        return [service.tokens_read(n) if chunk else min(n, limit) for n in counts]

    def check_model(model: str | None) -> None:
        """OpenAI answers 404 for a model it does not serve; so do we, unless told to accept any name."""
        if model is not None and not config.accept_any_model and not same_model(model, service.name):
            raise APIError(404, f"the model {model!r} is not served here; this server serves {service.name!r} "
                                f"(omit \"model\" or send that name)", "model", "model_not_found")

    def check_budget(counts: list[int]) -> None:
        if (total := sum(counts)) > config.max_request_tokens:
            raise APIError(413, f"the request holds {total} tokens (after truncation to max_length, or in all its "
                                f"windows); at most "
                                f"{config.max_request_tokens} per request (max_request_tokens, --max-request-tokens)"
                                f"; split it into smaller requests", "input", "too_many_tokens")

    async def infer(capability: str, items: Sequence[Any], counts: list[int], **params: Any) -> list[Any]:
        check_budget(counts)
        try:
            return await batchers[capability].submit(items, counts, **params)
        except BatcherClosed as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down",
                           headers={"Connection": "close"}) from None
        except QueueFull as e:
            raise APIError(503, str(e), type="server_error", code="overloaded",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except RequestTimeout as e:
            raise APIError(503, f"{e}; the server is busy: retry later, or send fewer or shorter texts",
                           type="server_error", code="timeout", headers={"Retry-After": "5"}) from None

    def usage(counts: list[int]) -> dict[str, int]:
        return {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}

    # ---- endpoints ----
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        """Sentence embeddings (OpenAI's /v1/embeddings)."""
        check_model(body.model)
        texts = texts_of(body.input)
        if body.dimensions is not None and body.dimensions != service.embedding_dim:
            raise APIError(422, f"dimensions must be {service.embedding_dim} (this model's size) if given, got "
                                f"{body.dimensions}", "dimensions", "invalid_value")
        sentence = service.encoder.sentence
        try:
            prompt = sentence.resolve_prompt(body.prompt_name)
        except BertkitError as e:
            raise APIError(422, str(e), "prompt_name", "invalid_value") from None
        counts = fit(await run_in_threadpool(service.count_tokens, sentence.prepare(texts, prompt)), body.truncate,
                     isinstance(body.input, str))  # the prompt's tokens count: the model reads them
        vectors = await infer("embeddings", texts, counts, normalize=body.normalize, prompt=prompt)
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
        check_model(body.model)
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
        explaining = body.explain or body.explain_steps is not None or body.explain_target is not None
        steps = check_explain(service, config, body.explain, body.explain_steps, body.explain_target,
                              counts) if explaining else 0
        items = list(zip(texts, pairs or [None] * len(texts), strict=True))
        preds = await infer("classify", items, counts, paired=pairs is not None)
        if explaining:
            preds = with_explanations(preds, await run_in_threadpool(service.explain, texts, pairs,
                                                                     body.explain_target, steps))
        return {"data": [{"index": i, **p} for i, p in enumerate(preds)], "model": service.name,
                "usage": usage(counts)}

    @app.post("/v1/ner")
    async def ner(body: NerRequest) -> dict[str, Any]:
        """Per-word tags and entity spans ({"type", "start", "end" (exclusive, in words), "text"}); with
        aggregation_strategy, entities of raw texts ({"entity_group", "score", "word", "start", "end"}, characters)."""
        check_model(body.model)
        require("ner")
        if body.aggregation_strategy is not None:
            texts = texts_of(body.input)
            if not all(isinstance(x, str) for x in texts):
                raise APIError(422, "aggregation_strategy takes raw texts, not word lists", "input", "invalid_value")
            counts = fit(await run_in_threadpool(service.count_tokens, texts), body.truncate,
                         isinstance(body.input, str))
            preds = await infer("ner", texts, counts, aggregation_strategy=body.aggregation_strategy)
            return {"data": [{"index": i, **p} for i, p in enumerate(preds)], "model": service.name,
                    "usage": usage(counts)}
        words = [x.split() if isinstance(x, str) else x for x in texts_of(body.input)]
        for i, w in enumerate(words):
            if not w:
                raise APIError(422, f"input[{i}] has no words", "input", "invalid_value")
        counts = fit(await run_in_threadpool(service.count_word_tokens, words), body.truncate,
                     isinstance(body.input, str))
        preds = await infer("ner", words, counts)
        return {"data": [{"index": i, **p} for i, p in enumerate(preds)], "model": service.name,
                "usage": usage(counts)}

    @app.post("/v1/qa")
    async def qa(body: QARequest) -> dict[str, Any]:
        """Answers {"answer", "score", "start", "end" (characters of the context, end exclusive)} of each question
        ("answers": a list of them with top_k > 1); contexts longer than max_length are read in windows."""
        check_model(body.model)
        require("qa")
        questions, contexts = texts_of(body.question), texts_of(body.context)
        if isinstance(body.question, str) != isinstance(body.context, str) or len(questions) != len(contexts):
            raise APIError(422, f"context must have the shape of question ({len(questions)} questions), got "
                                f"{len(contexts)}", "context", "invalid_value")
        assert isinstance(service.task_model, QAModel)
        try:  # contexts are read in windows, never truncated; a question must leave room for them
            counts = await run_in_threadpool(service.task_model.token_counts, questions, contexts)
        except ValueError as e:
            raise APIError(422, str(e), "question", "invalid_value") from None
        preds = await infer("qa", list(zip(questions, contexts, strict=True)), counts, top_k=body.top_k,
                            null_threshold=body.null_threshold)
        data = [{"index": i, **p} if body.top_k == 1 else {"index": i, "answers": p} for i, p in enumerate(preds)]
        return {"data": data, "model": service.name, "usage": usage(counts)}

    @app.post("/v1/fill-mask")
    async def fill_mask(body: FillMaskRequest) -> dict[str, Any]:
        """For each text, for each [MASK] left to right, the top_k {"token", "token_id", "score", "sequence"}."""
        check_model(body.model)
        require("fill-mask")
        texts = texts_of(body.input)
        counts = fit(await run_in_threadpool(service.count_tokens, texts), body.truncate, isinstance(body.input, str),
                     windows=False)
        assert service.fill_mask is not None
        try:  # every text must keep a [MASK] within max_length; the error names the text
            await run_in_threadpool(service.fill_mask.tokenize, texts)
        except BertkitError as e:
            raise APIError(422, str(e), "input", "invalid_value") from None
        preds = await infer("fill-mask", texts, counts, top_k=body.top_k)
        return {"data": [{"index": i, "predictions": p} for i, p in enumerate(preds)], "model": service.name,
                "usage": usage(counts)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """OpenAI's model list: the one model this server serves."""
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                            "owned_by": "bertkit"}]}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": service.name, "capabilities": service.capabilities}

    @app.get("/metrics", response_class=PlainTextResponse)  # documented as text, which it is
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
