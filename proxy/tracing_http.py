"""The request span, and the timings of :mod:`proxy.observe` as spans: installed only while tracing.

:class:`TraceRequests` opens one server span per HTTP request (a child of the client's ``traceparent``,
if any), named by the matched route's template, and makes the app's tracer current for the request.
:class:`TracingObserver` turns each extraction the worker reports into a span, and passes every timing
on to the metrics' observer.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import tracing
from proxy.metrics import route_of
from proxy.observe import Observer

MEMORY_HEADERS = {b"x-memory-status": "memproxy.memory.status", b"x-memory-mode": "memproxy.memory.mode"}


class TraceRequests:
    """Pure ASGI: a ``SERVER`` span around each HTTP request, with its route, status and memory status."""

    def __init__(self, app: ASGIApp, tracer: Any) -> None:
        self.app, self.tracer = app, tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        parent = propagate.extract(headers)
        method = scope["method"]
        with (
            tracing.using(self.tracer),
            self.tracer.start_as_current_span(
                method, context=parent, kind=SpanKind.SERVER, attributes={"http.request.method": method}
            ) as span,
        ):

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    for key, value in message.get("headers", ()):
                        name = MEMORY_HEADERS.get(key.lower())
                        if name is not None:
                            span.set_attribute(name, value.decode("latin-1"))
                        elif key.lower() == b"x-memory-recalled" and value.isdigit():
                            span.set_attribute("memproxy.memory.recalled", int(value))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = route_of(scope)
                span.set_attribute("http.route", route)
                span.update_name(f"{method} {route}")


class TracingObserver(Observer):
    """Every timing goes on to ``inner``; an extraction also becomes a span (``memproxy.extraction``)."""

    def __init__(self, inner: Observer) -> None:
        self.inner = inner

    def upstream(self, seconds: float) -> None:
        self.inner.upstream(seconds)  # the upstream call has its own span, opened before it (traceparent)

    def recall(self, outcome: str, seconds: float) -> None:
        self.inner.recall(outcome, seconds)  # the recall hook has its own span, with embed, search and render

    def extraction(self, outcome: str, seconds: float) -> None:
        self.inner.extraction(outcome, seconds)
        tracing.past_span("memproxy.extraction", seconds, outcome)
