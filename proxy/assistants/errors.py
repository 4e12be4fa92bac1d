"""How the Assistants routes answer errors: Starlette exception handlers, and the same ones called directly.

Two kinds reach the routes: :class:`~proxy.errors.OpenAIError` (memproxy's own refusal, rendered by
:func:`proxy.errors.openai_error_handler`) and :class:`~proxy.assistants.upstream.UpstreamError`
(the upstream's refusal, relayed with its own status and body by :func:`upstream_error_handler`).
An app serving these routes installs :data:`ASSISTANTS_EXCEPTION_HANDLERS` (the proxy and the emulator).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.assistants.upstream import UpstreamError
from proxy.errors import EXCEPTION_HANDLERS, OpenAIError
from proxy.ids import InvalidId


async def upstream_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: an :class:`UpstreamError` as the upstream answered it."""
    assert isinstance(exc, UpstreamError)
    return JSONResponse(exc.body, status_code=exc.status)


async def invalid_id_handler(request: Request, exc: Exception) -> Response:
    """An id that cannot be an OpenAI id names nothing: 404, as the API answers unknown ids."""
    failure = OpenAIError(404, "No object found with that id.", code="not_found")
    return JSONResponse(failure.envelope(), status_code=failure.status)


ASSISTANTS_EXCEPTION_HANDLERS: dict[Any, Any] = {
    **EXCEPTION_HANDLERS,
    UpstreamError: upstream_error_handler,
    InvalidId: invalid_id_handler,
}
"""Pass to ``Starlette(exception_handlers=...)`` (it includes :data:`proxy.errors.EXCEPTION_HANDLERS`)."""


async def error_response(request: Request, exc: Exception) -> Response | None:
    """The answer :data:`ASSISTANTS_EXCEPTION_HANDLERS` give ``exc``, or None when none handles it."""
    for kind, handler in ASSISTANTS_EXCEPTION_HANDLERS.items():
        if isinstance(exc, kind):
            response: Response = await handler(request, exc)
            return response
    return None
