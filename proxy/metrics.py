"""Prometheus metrics at ``/metrics`` and the request middleware that feeds them and the logs.

Cheap by construction: the middleware is plain ASGI (no BaseHTTPMiddleware), it takes three clock
readings and a handful of histogram observations per request, and reads the memory outcome from
the ``x-memory-*`` headers the hooks already put on the response. Upstream, recall and extraction
timings come from the code that does the work, through :class:`PrometheusObserver`. Everything
the runtime already counts (degraded causes, captured turns, worker outcomes, open upstream
responses, queue depth, dead letters) is read at scrape time by a collector, not counted again on
the hot path. Each app has its own registry, so two proxies in one process (the tests) never mix
their numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import audit, logs
from proxy.memory.redact import KINDS as REDACTED_KINDS
from proxy.observe import Observer

if TYPE_CHECKING:
    from proxy.learn.worker import Worker
    from proxy.runtime import Runtime

log = logging.getLogger("memproxy.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
DEGRADED_CAUSES = (
    "recall_timeout",
    "recall_overloaded",
    "recall_store_paused",
    "recall_error",
    "hook_error",
    "capture_error",
)
JOB_OUTCOMES = ("claimed", "processed", "failed", "dead_lettered", "lost", "fenced", "waiting", "released")
BACKENDS = ("state", "memory", "spool")
"""Parts opened (or delivered) in the background, retried with backoff: ``retries.<part>`` counters."""
TURN_OUTCOMES = ("spooled", "delivered", "lost")
MEMORY_OPS = ("add", "update", "delete", "unchanged", "skipped")
OUTCOMES = ("ok", "error", "cancelled")
OPTIMIZE_OUTCOMES = ("ok", "error")
DEAD_LETTER_CAP = 1000
"""Dead letters are counted up to this many per scrape (the store lists them; it keeps no count)."""
QUIET_ROUTES = frozenset({"/metrics", "/healthz", "/readyz", "/readyz/memory"})


class Metrics:
    """One app's registry and the series measured on the request path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter, histogram = partial(Counter, registry=self.registry), partial(Histogram, registry=self.registry)
        self.requests = counter(
            "memproxy_requests", "Requests served, by route template, method and status.", ["route", "method", "status"]
        )
        self.duration = histogram(
            "memproxy_request_duration_seconds",
            "Time from the request's arrival to its last response byte.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
        )
        self.upstream = histogram(
            "memproxy_upstream_latency_seconds",
            "Time from sending a request upstream to the upstream's response headers.",
            ["route"],
            buckets=LATENCY_BUCKETS,
        )
        self.added = histogram(
            "memproxy_added_latency_seconds",
            "Time the proxy adds before the response starts: time to response headers minus upstream latency "
            "(includes recall).",
            ["route"],
            buckets=FAST_BUCKETS,
        )
        self.recall = histogram(
            "memproxy_recall_duration_seconds",
            "Memory recall latency (hooks and memory API), by outcome.",
            ["outcome"],
            buckets=FAST_BUCKETS,
        )
        self.extraction = histogram(
            "memproxy_extraction_duration_seconds",
            "LLM extraction of one job (in-process worker), by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
        )
        self.memory_status = counter(
            "memproxy_memory_requests",
            "Hooked requests by memory outcome (x-memory-status): ok, none, off, degraded.",
            ["status"],
        )
        self.injected = counter("memproxy_memories_injected", "Memories injected into upstream requests.")
        self.collector = RuntimeCollector()
        self.registry.register(self.collector)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._routes: dict[str, tuple[Histogram, Histogram]] = {}
        self._status: dict[str, Counter] = {}
        self.observer = PrometheusObserver(self)
        """Installed as ``runtime.observer`` by the app: the timings of upstream calls, recalls, extractions."""

    # --- hot path: cached children, no label resolution per request ----------------------------

    def observe(
        self, route: str, method: str, info: logs.RequestInfo, end: float, memory: str | None, recalled: int
    ) -> None:
        key = (route, method, info.status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(info.status)), self.duration.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(end - info.start)
        if info.upstream is not None:
            per_route = self._routes.get(route)
            if per_route is None:
                per_route = (self.upstream.labels(route), self.added.labels(route))
                self._routes[route] = per_route
            per_route[0].observe(info.upstream)
            if info.headers_at:
                per_route[1].observe(max(0.0, info.headers_at - info.start - info.upstream))
        if memory is not None:
            child = self._status.get(memory)
            if child is None:
                child = self._status[memory] = self.memory_status.labels(memory)
            child.inc()
            if recalled:
                self.injected.inc(recalled)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeCollector:
    """Series the runtime already keeps, read at scrape time; async parts are refreshed first."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.queue_depth: int | None = None
        self.dead_letters: int | None = None
        self.waiting_for_key: int | None = None
        self.state_up = 0
        self.spool_depth: int | None = None

    async def refresh(self) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        try:
            self.spool_depth = await runtime.spool.depth()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the spool
            log.warning("metrics: spool depth unavailable (%s)", type(exc).__name__)
            self.spool_depth = None
        self.state_up = 0
        if runtime.store is None:  # not open yet: /readyz says why, no warning per scrape
            self.queue_depth = self.waiting_for_key = self.dead_letters = None
            return
        try:
            self.queue_depth = await runtime.store.pending_count()
            self.state_up = 1
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the state store
            log.warning("metrics: queue depth unavailable (%s)", type(exc).__name__)
            self.queue_depth = self.waiting_for_key = self.dead_letters = None
            return
        try:
            self.waiting_for_key = await runtime.store.waiting_count()
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: jobs waiting for a key unavailable (%s)", type(exc).__name__)
            self.waiting_for_key = None
        try:
            self.dead_letters = len(await runtime.store.dead_letters(limit=DEAD_LETTER_CAP))
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: dead letters unavailable (%s)", type(exc).__name__)
            self.dead_letters = None

    def describe(self) -> list[Metric]:
        return []  # scrape-time only; nothing to check for name clashes up front

    def collect(self) -> list[Metric]:
        runtime = self.runtime
        if runtime is None:
            return []
        return [
            *self._events(runtime),
            *self._gauges(runtime),
            *self._worker(runtime.worker),
            self._audit(runtime),
            self._redactions(runtime),
            *self._upkeep(runtime),
        ]

    @staticmethod
    def _events(runtime: Runtime) -> list[Metric]:
        """Degraded requests by cause, retries by part, other runtime events, captured and spooled turns."""
        degraded = CounterMetricFamily(
            "memproxy_degraded", "Requests sent upstream without memory, by cause.", labels=["cause"]
        )
        retries = CounterMetricFamily(
            "memproxy_backend_retries",
            "Failed tries to open the state store or the memory layer, or to deliver the spool (each retried "
            "after a capped exponential backoff), by part.",
            labels=["part"],
        )
        events = CounterMetricFamily("memproxy_events", "Other runtime events, by name.", labels=["event"])
        counts = dict.fromkeys(DEGRADED_CAUSES, 0)
        tries = dict.fromkeys(BACKENDS, 0)
        for name, value in list(runtime.counters.items()):
            if name.startswith("degraded."):
                counts[name.removeprefix("degraded.")] = value
            elif name.startswith("retries."):
                tries[name.removeprefix("retries.")] = value
            elif not name.startswith(("turns.", "redactions.")):
                events.add_metric([name], value)
        for cause, value in sorted(counts.items()):
            degraded.add_metric([cause], value)
        for part, value in sorted(tries.items()):
            retries.add_metric([part], value)
        turn = runtime.counters.get
        families = [
            CounterMetricFamily(
                "memproxy_turns_captured",
                "Finished turns queued for extraction (directly, or delivered from the spool).",
                value=turn("turns.captured", 0),
            ),
            CounterMetricFamily(
                "memproxy_turns_spooled",
                "Finished turns the state store could not take, kept in the local spool.",
                value=turn("turns.spooled", 0),
            ),
            CounterMetricFamily(
                "memproxy_turns_delivered",
                "Spooled turns delivered to the job queue once the state store was back.",
                value=turn("turns.delivered", 0),
            ),
            CounterMetricFamily(
                "memproxy_turns_lost",
                "Finished turns neither queued nor spooled (the state store and the spool both failed).",
                value=turn("turns.lost", 0),
            ),
            CounterMetricFamily(
                "memproxy_turns_captured_late",
                "Answers that ended before their turn was queued or spooled (the capture deadline passed; the "
                "capture went on in the background).",
                value=runtime.forwarder.captures_late,
            ),
        ]
        return [degraded, retries, events, *families]

    def _gauges(self, runtime: Runtime) -> list[Metric]:
        """What is open, up and waiting now."""
        worker = runtime.worker
        values: list[tuple[str, str, float | None]] = [
            (
                "memproxy_open_upstream_responses",
                "Upstream responses being relayed now (open streams).",
                runtime.forwarder.open_responses,
            ),
            (
                "memproxy_upstream_requests_waiting",
                "Requests sent upstream whose answer has not begun (no response headers yet).",
                runtime.forwarder.waiting,
            ),
            (
                "memproxy_memory_up",
                "1 when the memory layer is available, 0 when the proxy only forwards.",
                1 if runtime.memory is not None else 0,
            ),
            (
                "memproxy_state_up",
                "1 when the state store answered this scrape, 0 while it is not open or not answering.",
                self.state_up,
            ),
            (
                "memproxy_spool_depth",
                "Finished turns in the local spool, waiting for the state store.",
                self.spool_depth,
            ),
            (
                "memproxy_jobs_waiting_for_key",
                "Extraction jobs waiting for a live request of their tenant to bring an API key (no attempt spent).",
                self.waiting_for_key,
            ),
            (
                "memproxy_queue_depth",
                "Extraction jobs pending: waiting, leased or scheduled for a retry.",
                self.queue_depth,
            ),
            (
                "memproxy_dead_letters",
                f"Jobs dead-lettered after their last attempt (counted up to {DEAD_LETTER_CAP}).",
                self.dead_letters,
            ),
            (
                "memproxy_worker_running",
                "1 when the in-process extraction worker runs.",
                1 if worker is not None and worker.running else 0,
            ),
        ]
        return [GaugeMetricFamily(name, text, value=value) for name, text, value in values if value is not None]

    @staticmethod
    def _audit(runtime: Runtime) -> Metric:
        """Audit entries this process appended; per tenant, the log line of each append says seq and hash."""
        return CounterMetricFamily(
            "memproxy_audit_entries_appended",
            "Audit entries appended by this process (each one also logged with its tenant, seq and hash prefix).",
            value=runtime.store.chain_appends.get(audit.COLLECTION, 0) if runtime.store is not None else 0,
        )

    @staticmethod
    def _redactions(runtime: Runtime) -> Metric:
        """Secrets the memory layer replaced by a marker before a write, by kind (never their values)."""
        family = CounterMetricFamily(
            "memproxy_redactions",
            "Secrets (keys, passwords, card numbers, IBANs, ...) replaced by a [redacted:<kind>] marker in memories "
            "and captured turns before they were stored or queued, by kind.",
            labels=["kind"],
        )
        counts = dict(runtime.memory.redactions) if runtime.memory is not None else {}
        for name, value in list(runtime.counters.items()):
            if name.startswith("redactions."):  # captured turns (proxy.learn.turn.redact_turn)
                kind = name.removeprefix("redactions.")
                counts[kind] = counts.get(kind, 0) + value
        for kind in sorted(set(REDACTED_KINDS) | set(counts)):
            family.add_metric([kind], counts.get(kind, 0))
        return family

    @staticmethod
    def _upkeep(runtime: Runtime) -> list[Metric]:
        """The embedded store's optimize runs (proxy/memory/upkeep.py); zeros on a Qdrant server or when off."""
        upkeep = runtime.upkeep
        runs = CounterMetricFamily(
            "memproxy_store_optimize_runs",
            "Optimize runs of the embedded store (HNSW index built, segments merged, in a child process), by outcome.",
            labels=["outcome"],
        )
        for outcome in OPTIMIZE_OUTCOMES:
            runs.add_metric([outcome], upkeep.runs[outcome] if upkeep is not None else 0)
        seconds = CounterMetricFamily(
            "memproxy_store_optimize_seconds",
            "Seconds the embedded store spent in optimize runs (its calls wait meanwhile; recalls fail open).",
            value=upkeep.seconds if upkeep is not None else 0.0,
        )
        if upkeep is None or upkeep.waiting is None:
            return [runs, seconds]
        waiting = GaugeMetricFamily(
            "memproxy_store_unindexed_points",
            "Points of the embedded store written or rewritten since its last optimize, searched by a plain scan until "
            "the next (estimated from its counters at the last check).",
            value=upkeep.waiting,
        )
        return [runs, seconds, waiting]

    @staticmethod
    def _worker(worker: Worker | None) -> list[Metric]:
        """Jobs and memory operations of this process's worker."""
        if worker is None:
            return []
        stats = worker.stats
        jobs = CounterMetricFamily(
            "memproxy_jobs", "Jobs handled by this process's worker, by outcome.", labels=["outcome"]
        )
        for outcome in JOB_OUTCOMES:
            jobs.add_metric([outcome], getattr(stats, outcome, 0))
        ops = CounterMetricFamily(
            "memproxy_memory_operations", "Extracted memory operations, by result.", labels=["op"]
        )
        for op in MEMORY_OPS:
            ops.add_metric([op], stats.ops.get(op, 0) if op in ("add", "update", "delete") else getattr(stats, op, 0))
        return [jobs, ops]


# --- the observer: timings reported by the forwarder, the recall hook and the worker -------------


class PrometheusObserver(Observer):
    """Feeds one app's histograms (see :mod:`proxy.observe`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._recall = {outcome: metrics.recall.labels(outcome) for outcome in OUTCOMES}
        self._extraction = {outcome: metrics.extraction.labels(outcome) for outcome in OUTCOMES}

    def upstream(self, seconds: float) -> None:
        """Added to the request's upstream time; the middleware observes it under the route template
        when the request ends (with the added latency), so a request counts once however many calls."""
        info = logs.current.get()
        if info is not None:
            info.upstream = (info.upstream or 0.0) + seconds

    def recall(self, outcome: str, seconds: float) -> None:
        self._recall[outcome].observe(seconds)

    def extraction(self, outcome: str, seconds: float) -> None:
        self._extraction[outcome].observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    await metrics.collector.refresh()
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# --- the middleware --------------------------------------------------------------------------------


def route_of(scope: Scope) -> str:
    """The matched route's template (``/v1/threads/{thread_id}/runs``), never the raw path."""
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    root_path: str = scope.get("root_path", "")
    app_root_path: str = scope.get("app_root_path", "")
    prefix = root_path[len(app_root_path) :]
    return prefix + path if prefix else path


@dataclass(slots=True)
class MemoryOutcome:
    """What the hooks put on the response: ``x-memory-status`` (None: not a hooked request) and
    ``x-memory-recalled``."""

    status: str | None = None
    recalled: int = 0


class Observe:
    """Pure ASGI: request id and context for the logs, request series for the metrics, access log."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = logs.RequestInfo(logs.new_request_id(), time.perf_counter(), scope)
        token = logs.current.set(info)
        memory = MemoryOutcome()
        done = False

        async def observed_send(message: Message) -> None:
            nonlocal done
            kind = message["type"]
            if kind == "http.response.start":
                info.headers_at = time.perf_counter()
                info.status = message["status"]
                for key, value in message.get("headers", ()):
                    if key[:2] == b"x-" or key[:2] == b"X-":
                        name = key.lower()
                        if name == b"x-request-id":
                            info.request_id = value.decode("latin-1")
                        elif name == b"x-memory-status":
                            memory.status = value.decode("latin-1")
                        elif name == b"x-memory-recalled":
                            memory.recalled = int(value) if value.isdigit() else 0
                        elif name == b"x-memory-subject":
                            info.subject = value.decode("latin-1")
            elif kind == "http.response.body" and not message.get("more_body", False) and not done:
                # recorded before the last byte leaves: whoever saw the response can already see it counted
                done = True
                self.finish(scope, info, memory)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            if not info.status:
                info.status = 500
            raise
        finally:
            try:
                if not done:  # broken off: an error, a client gone, an upstream stream cut
                    self.finish(scope, info, memory)
            finally:
                logs.current.reset(token)

    def finish(self, scope: Scope, info: logs.RequestInfo, memory: MemoryOutcome) -> None:
        end = time.perf_counter()
        route = route_of(scope)
        self.metrics.observe(route, scope["method"], info, end, memory.status, memory.recalled)
        access = logs.access_log
        level = logging.DEBUG if route in QUIET_ROUTES and info.status < 400 else logging.INFO
        if access.isEnabledFor(level):
            fields: dict[str, Any] = {
                "method": scope["method"],
                "route": route,
                "status": info.status,
                "duration_ms": round((end - info.start) * 1000, 3),
            }
            if info.local_id != info.request_id:
                fields["local_id"] = info.local_id
            if info.upstream is not None:
                fields["upstream_ms"] = round(info.upstream * 1000, 3)
            if memory.status is not None:
                fields["memory"] = memory.status
                fields["recalled"] = memory.recalled
            access.log(level, "%s %s %d", scope["method"], route, info.status, extra=fields)
