"""The API's one error shape, OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal the server makes (validation, limits, authentication, shutdown) is built here, so clients and the
OpenAPI document see one schema; ``ERROR_SCHEMA`` is that schema, for the document.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def error_bytes(status: int, message: str, code: str, type: str = "invalid_request_error") -> bytes:
    """A whole HTTP/1.1 error response with ``Connection: close``, for the protocol layer (no ASGI app yet)."""
    body = JSONResponse({"error": {"message": message, "type": type, "param": None, "code": code}}).body
    reason = {400: "Bad Request", 408: "Request Timeout"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string", "description": "what was wrong and where"},
            "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
            "param": {"type": ["string", "null"], "description": "the request field at fault, if one is"},
            "code": {"type": ["string", "null"], "description": "a stable machine-readable reason"},
        },
    }},
}
