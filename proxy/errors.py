"""One exception tree, and the one OpenAI-shaped error envelope every HTTP surface answers with.

Everything memproxy raises on purpose derives from :class:`MemproxyError`. Errors a client should
see are :class:`OpenAIError`: raised anywhere (also in code with no HTTP in it, like the Assistants
engine), rendered once by :func:`openai_error_handler`, which the proxy, the memory API, the
Assistants bridge and the emulator all install through :data:`EXCEPTION_HANDLERS`, so SDKs surface
memproxy's own errors exactly like the upstream's.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

CLIENT_CLOSED = 499
"""Status recorded (access log, metrics) for a request whose client went away: nginx's convention.
Never read by anyone: the client is gone."""


class MemproxyError(Exception):
    """The root of every exception memproxy raises on purpose."""


class OpenAIError(MemproxyError):
    """An error answered to the client as ``{"error": {message, type, param, code}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def envelope(self) -> dict[str, Any]:
        return envelope(self.message, type=self.type, code=self.code, param=self.param)


def envelope(
    message: str, *, type: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    should_retry: bool | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build ``{"error": {...}}`` as the OpenAI API does.

    ``should_retry`` sets ``x-should-retry``, which the official SDKs obey over their status-code
    heuristics: it must be ``false`` whenever the upstream may already have acted on the request.
    """
    extra = dict(headers or {})
    if should_retry is not None:
        extra["x-should-retry"] = "true" if should_retry else "false"
    body = envelope(message, type=type, code=code, param=param)
    return JSONResponse(body, status_code=status, headers=extra)


async def openai_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: an :class:`OpenAIError` raised by any endpoint, as its envelope."""
    assert isinstance(exc, OpenAIError)
    return JSONResponse(exc.envelope(), status_code=exc.status)


EXCEPTION_HANDLERS: dict[Any, Any] = {OpenAIError: openai_error_handler}
"""Pass to ``Starlette(exception_handlers=...)``."""
