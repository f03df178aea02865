"""``/v1/classify`` with ``"explain": true``: the request's checks and its attributions (``bertkit.explain``).

An explanation runs the model forward and backward on ``explain_steps`` interpolation points per text, so it is
charged ``explain_steps x tokens`` against ``max_request_tokens`` (a 413 beyond). It runs outside the micro-batcher
(the batcher merges forward-only inference), one explanation request at a time (``Service.explain`` holds a lock),
in a worker thread; the request's labels still come from the batcher.
"""

from __future__ import annotations

from typing import Any

from bertkit.errors import BertkitError
from bertkit.explain import DEFAULT_STEPS, resolve_target, why_not_explainable
from bertkit.serve.config import ServerConfig
from bertkit.serve.errors import APIError
from bertkit.serve.service import Service

MAX_STEPS = 512  # explain_steps above this is a 422: the cost grows linearly and 50 is already accurate


def check_explain(service: Service, config: ServerConfig, explain: bool, steps: int | None, target: str | None,
                  counts: list[int]) -> int:
    """The number of steps to run, or an APIError saying why this explanation request cannot run."""
    if not explain:
        field = "explain_steps" if steps is not None else "explain_target"
        raise APIError(422, f"{field} needs \"explain\": true", field, "invalid_value")
    assert service.task_model is not None  # require("classify") ran
    if (reason := why_not_explainable(service.task_model)) is not None:
        raise APIError(400, f"model {service.name}: {reason}", "explain", "unsupported_option")
    try:
        resolve_target(service.task_model, target)
    except BertkitError as e:
        raise APIError(422, str(e), "explain_target", "invalid_value") from None
    n = DEFAULT_STEPS if steps is None else steps
    if (cost := n * sum(counts)) > config.max_request_tokens:
        raise APIError(413, f"an explanation runs the model on explain_steps x tokens = {n} x {sum(counts)} = {cost} "
                            f"tokens; at most {config.max_request_tokens} per request (max_request_tokens, "
                            f"--max-request-tokens): send fewer or shorter texts, or fewer explain_steps",
                       "input", "too_many_tokens")
    return n


def with_explanations(preds: list[dict[str, Any]], explanations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prediction with its ``explanation`` next to the label."""
    return [{**p, "explanation": e} for p, e in zip(preds, explanations, strict=True)]
