"""The Starlette application: probes, the memory API, the Assistants bridge, and /v1 forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy import __version__, api, tracing
from proxy.api import memory_routes
from proxy.assistants.errors import ASSISTANTS_EXCEPTION_HANDLERS
from proxy.config import Settings, get_settings, split_problem
from proxy.hooks import assistants as hooks
from proxy.hooks.bridge import bridge_routes
from proxy.hooks.chat import create_chat_completion
from proxy.hooks.responses import create_response, retrieve_response
from proxy.identity import memory_api_refusal
from proxy.limits import ClientGuard
from proxy.memory.embed import Embedder
from proxy.metrics import Metrics, Observe, metrics_endpoint
from proxy.netio import declare_asyncio_thread
from proxy.runtime import STARTING, Runtime, open_runtime
from proxy.tracing_http import TraceRequests, TracingObserver
from proxy.ui import ui_routes

log = logging.getLogger("memproxy.app")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def relay(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return await runtime.forwarder.forward(request)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


PING_TIMEOUT = 1.0
"""Seconds a readiness check waits for the state store's answer."""


async def state_check(runtime: Runtime) -> str:
    """``ok`` when the state store answers now, else why not (not opened yet, or failing)."""
    store = runtime.store
    if store is None:
        return runtime.problems.get("state", "not opened")
    try:
        await asyncio.wait_for(store.ping(), PING_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a probe reports, it never fails
        return f"unavailable: {type(exc).__name__}"
    return "ok"


async def readiness(runtime: Runtime) -> dict[str, Any]:
    """What works now: forwarding (always, once serving), the state store, the memory layer, the spool."""
    state = await state_check(runtime)
    memory = "ok" if runtime.memory is not None else runtime.problems.get("memory", "off")
    checks = {"forwarding": "ok", "state": state, "memory": memory}
    pending = runtime.spool.pending
    checks["spool"] = f"{pending} turns waiting for the state store" if pending else "empty"
    if "worker" in runtime.problems:
        checks["worker"] = runtime.problems["worker"]
    checks["memory_api"] = memory_api_refusal(runtime.settings) or "ok"
    usable = state == "ok" and memory == "ok"
    status = "ready" if usable else "starting" if STARTING in (state, memory) else "degraded"
    return {"status": status, "memory_ready": usable, "checks": checks}


async def readyz(request: Request) -> Response:
    """Ready to forward: 200 as soon as the app serves, whatever memory's state; the body says how memory is.

    Forwarding never depends on Redis, Qdrant or the model, so neither does readiness: a pod whose
    memory is down still serves every call (``x-memory-status: degraded``). ``memory_api`` says why the
    memory API refuses every call, if it does. ``/readyz/memory`` is the probe that waits for memory.
    """
    return JSONResponse(await readiness(request.app.state.runtime))


async def memory_readyz(request: Request) -> Response:
    """200 once memory works end to end (memory layer and state store open and answering), else 503."""
    body = await readiness(request.app.state.runtime)
    return JSONResponse(body, status_code=200 if body["memory_ready"] else 503)


def passthrough_routes() -> list[BaseRoute]:
    """Assistants calls the upstream serves, with memory hooked in."""
    runs = "/v1/threads/{thread_id}/runs"
    return [
        Route("/v1/threads", hooks.create_thread, methods=["POST"]),
        Route("/v1/threads/runs", hooks.create_thread_and_run, methods=["POST"]),
        Route("/v1/threads/{thread_id}/messages", hooks.create_message, methods=["POST"]),
        Route(runs, hooks.create_run, methods=["POST"]),
        Route(runs + "/{run_id}", hooks.retrieve_run, methods=["GET"]),
        Route(runs + "/{run_id}/submit_tool_outputs", hooks.submit_tool_outputs, methods=["POST"]),
        Route("/v1/assistants/{assistant_id}", hooks.update_assistant, methods=["POST"]),
    ]


def create_app(
    settings: Settings | None = None, *, embedder: Embedder | None = None, tracer_provider: Any | None = None
) -> Starlette:
    """The proxy. ``tracer_provider``: an OpenTelemetry ``TracerProvider`` (default: one from ``OTEL_*``,
    if the ``otel`` extra is installed and the variables ask for traces; else no tracing at all)."""
    settings = settings or get_settings()
    metrics = Metrics()  # one registry per app: two proxies in a process never mix their numbers
    owned = tracer_provider is None
    provider = tracing.provider_from_env() if owned else tracer_provider
    tracer = tracing.tracer_of(provider) if provider is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        declare_asyncio_thread()  # the server's loop thread: see proxy/netio.py
        problem = split_problem(settings)
        if problem is not None:  # one clear line before the start-up fails (open_runtime refuses it too)
            log.error("refusing to start: %s", problem)
        with tracing.using(tracer):  # the background tasks (worker, retries) trace with the app's tracer
            async with open_runtime(settings, embedder=embedder, background=True) as runtime:
                app.state.runtime = metrics.collector.runtime = runtime
                # before the memory layer's background start can run: its worker takes runtime.observer
                observer = metrics.observer if tracer is None else TracingObserver(metrics.observer)
                runtime.observer = runtime.forwarder.observer = observer
                refusal = memory_api_refusal(settings)
                if refusal is not None:
                    log.warning(refusal)
                yield
        if provider is not None and owned:
            provider.shutdown()  # exports what is left (the console exporter prints it)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/readyz/memory", memory_readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *memory_routes(),
        *ui_routes(),
    ]
    if settings.assistants_mode == "bridge":
        routes += bridge_routes()
    else:
        routes += passthrough_routes()
    routes += [
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
        Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
        Route("/v1", relay, methods=METHODS),
        Route("/v1/{path:path}", relay, methods=METHODS),
    ]
    handlers = {**ASSISTANTS_EXCEPTION_HANDLERS, **api.EXCEPTION_HANDLERS}
    guard = Middleware(
        ClientGuard,
        max_header_bytes=settings.max_header_bytes,
        max_field_bytes=settings.max_header_field_bytes,
        body_timeout=settings.body_timeout,
    )
    middleware = [Middleware(Observe, metrics=metrics), guard]  # Observe outside: it sees the guard's answers
    if tracer is not None:  # outermost: the request's span covers everything the proxy does for it
        middleware.insert(0, Middleware(TraceRequests, tracer=tracer))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers=handlers)
    app.state.settings = settings
    app.state.metrics = metrics
    return app
