"""OpenTelemetry spans: only with the ``otel`` extra installed and the standard ``OTEL_*`` variables asking.

``pip install memproxy[otel]`` and, e.g., ``OTEL_TRACES_EXPORTER=console`` (or ``otlp`` with
``opentelemetry-exporter-otlp``, or just ``OTEL_EXPORTER_OTLP_ENDPOINT``); ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_PROPAGATORS``, ``OTEL_BSP_*`` and
``OTEL_SDK_DISABLED`` work as everywhere. Without the extra, or without the variables, nothing here
imports OpenTelemetry and every helper costs one context-variable read.

The tracer is per app, held in a context variable the app sets for its requests and its background
tasks (:mod:`proxy.tracing_http`), so two proxies in one process never mix their spans. Attributes are
names, routes, statuses, counts and durations: never a key, a subject, a query or message text.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Iterator, Mapping
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import Any, TypeVar

from proxy import __version__

log = logging.getLogger("memproxy.tracing")

T = TypeVar("T")
AttributeValue = str | int | float | bool

TRACER: ContextVar[Any | None] = ContextVar("memproxy_tracer", default=None)
"""The app's ``opentelemetry.trace.Tracer`` while tracing, else None (the default: nothing traced)."""

EXPORTERS = "opentelemetry_traces_exporter"
"""The entry-point group where exporters register (``console`` by the SDK, ``otlp`` by its exporters)."""


def wanted_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters ``OTEL_*`` asks for: none unless traces are asked for explicitly, or disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not names and (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    return [name for name in names if name != "none"]


def provider_from_env(environ: Mapping[str, str] | None = None) -> Any | None:
    """An SDK ``TracerProvider`` exporting where ``OTEL_*`` says, or None (no extra, nothing asked, no exporter)."""
    environ = os.environ if environ is None else environ
    names = wanted_exporters(environ)
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: pip install 'memproxy[otel]'")
        return None
    attributes: dict[str, AttributeValue] = {"service.version": __version__}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "memproxy"
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler from OTEL_TRACES_SAMPLER
    exporters = 0
    for name in names:
        found = list(entry_points(group=EXPORTERS, name=name))
        if not found:
            log.warning(
                "no OpenTelemetry trace exporter named %r is installed (otlp: opentelemetry-exporter-otlp)", name
            )
            continue
        provider.add_span_processor(BatchSpanProcessor(found[0].load()()))
        exporters += 1
    return provider if exporters else None


def tracer_of(provider: Any) -> Any:
    return provider.get_tracer("memproxy", __version__)


def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None, *, client: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one while tracing (the span as target, current inside), else a no-op (None)."""
    tracer = TRACER.get()
    if tracer is None:
        return contextlib.nullcontext()
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    opened: contextlib.AbstractContextManager[Any] = tracer.start_as_current_span(
        name, kind=kind, attributes=attributes
    )
    return opened


async def traced(name: str, work: Awaitable[T]) -> T:
    """Await ``work`` inside a span named ``name`` (just awaited when not tracing)."""
    if TRACER.get() is None:
        return await work
    with span(name):
        return await work


def past_span(name: str, seconds: float, outcome: str) -> None:
    """A span for work that just ended, timed by its caller (:mod:`proxy.observe`): it began ``seconds`` ago."""
    tracer = TRACER.get()
    if tracer is None:
        return
    from opentelemetry.trace import Status, StatusCode

    end = time.time_ns()
    done = tracer.start_span(name, start_time=end - int(seconds * 1e9), attributes={"memproxy.outcome": outcome})
    if outcome == "error":
        done.set_status(Status(StatusCode.ERROR))
    done.end(end_time=end)


def trace_headers() -> dict[str, str]:
    """The current span's context as headers (W3C ``traceparent``, per ``OTEL_PROPAGATORS``); {} untraced."""
    carrier: dict[str, str] = {}
    if TRACER.get() is not None:
        from opentelemetry import propagate as otel

        otel.inject(carrier)
    return carrier


def propagate(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` for an upstream call: the client's trace headers replaced by the current span's.

    Unchanged when not tracing: the client's ``traceparent`` then goes up as it came.
    """
    if TRACER.get() is None:
        return headers
    from opentelemetry import propagate as otel

    carrier = trace_headers()
    fields = {name.lower().encode() for name in otel.get_global_textmap().fields} | {name.encode() for name in carrier}
    kept = [(key, value) for key, value in headers if key.lower() not in fields]
    return kept + [(name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()]


@contextlib.contextmanager
def using(tracer: Any | None) -> Iterator[None]:
    """Trace with ``tracer`` in this context (and the tasks it starts), e.g. an app's lifespan."""
    token = TRACER.set(tracer)
    try:
        yield
    finally:
        TRACER.reset(token)
