"""The Starlette application: health probes, and everything under /v1 relayed to the upstream."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy import __version__
from proxy.config import Settings, get_settings
from proxy.forward import Forwarder, make_client

log = logging.getLogger("memproxy")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with make_client(settings) as client:
            app.state.forwarder = Forwarder(client, settings)
            yield

    async def relay(request: Request) -> Response:
        return await request.app.state.forwarder.forward(request)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready", "checks": {}})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1", relay, methods=METHODS),
        Route("/v1/{path:path}", relay, methods=METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    return app
