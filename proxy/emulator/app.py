"""The emulator's Starlette app: routes, error handling, middleware and per-instance state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.assistants.errors import ASSISTANTS_EXCEPTION_HANDLERS
from proxy.emulator import assistants, chat, control, conversations, embeddings, files, models, responses
from proxy.emulator.middleware import EmulatorMiddleware
from proxy.emulator.state import EmulatorState
from proxy.errors import error_response

CONTROL_ROUTES = [
    Route("/_emulator/requests", control.list_requests, methods=["GET"]),
    Route("/_emulator/requests", control.clear_requests, methods=["DELETE"]),
    Route("/_emulator/faults", control.add_faults, methods=["POST"]),
    Route("/_emulator/faults", control.list_faults, methods=["GET"]),
    Route("/_emulator/faults", control.clear_faults, methods=["DELETE"]),
    Route("/_emulator/reset", control.reset, methods=["POST"]),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and methods, worded as OpenAI words them."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):
        return error_response(exc.status_code, f"Invalid URL ({request.method} {request.url.path})")
    return error_response(exc.status_code, str(exc.detail))


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(*, background_delay: float = 0.05) -> Starlette:
    """A fresh emulator with its own empty state.

    ``background_delay``: seconds a ``background: true`` response stays ``queued``, then
    ``in_progress``, before it completes.
    """
    state = EmulatorState(background_delay=background_delay)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        state.cancel_tasks()

    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        *CONTROL_ROUTES,
        *chat.ROUTES,
        *responses.ROUTES,
        *conversations.ROUTES,
        *embeddings.ROUTES,
        *files.ROUTES,
        *models.ROUTES,
        *assistants.ROUTES,
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(EmulatorMiddleware)],
        exception_handlers={**ASSISTANTS_EXCEPTION_HANDLERS, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.emulator = state
    return app
