"""OpenTelemetry: a span per request with recall (embed, search, render) and the upstream call as children,
W3C traceparent sent upstream, a span per extraction job, nothing secret in any span, nothing at all
when tracing is not asked for; and ``OTEL_TRACES_EXPORTER=console`` on ``memproxy serve`` prints spans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (opentelemetry-sdk) is not installed")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.client import Memory

FACT = "Their company is Acme Corp and they run Kubernetes in production"
QUESTION = "What do we run in production?"
KEY = "sk-tracing-secret-key"
USER = "alice-tracing@example.com"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def start_traced(tmp_path_factory, emulator_server, local_embedder, memory_model_dir):
    """Start proxies whose spans go to an in-memory exporter (``server.exporter``); stopped at the end."""
    from proxy.app import create_app
    from proxy.config import Settings
    from proxy.server import ServerThread

    started = []

    def start(**overrides):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        settings = Settings(
            upstream_url=emulator_server.url + "/v1",
            data_dir=tmp_path_factory.mktemp("traced"),
            embed_model_path=memory_model_dir,
            **overrides,
        )
        app = create_app(settings, embedder=local_embedder, tracer_provider=provider)
        server = ServerThread(app).start()
        deadline = time.monotonic() + 30
        while app.state.runtime.problems.get("memory") == "starting" and time.monotonic() < deadline:
            time.sleep(0.01)
        server.exporter, server.app = exporter, app
        started.append((server, provider))
        return server

    yield start
    for server, provider in started:
        server.stop()
        provider.shutdown()


@pytest.fixture(scope="module")
def traced(start_traced):
    """A traced proxy with the in-process worker (verbatim extraction: no model call)."""
    return start_traced(extractor="verbatim")


def spans_of(exporter, trace_id: int, wanted: int, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if len(spans) >= wanted or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def everything_said(spans) -> str:
    """Every name, attribute and event of ``spans``, as one text to search for secrets."""
    parts = []
    for span in spans:
        parts += [span.name, json.dumps(dict(span.attributes or {}), default=str)]
        parts += [event.name + json.dumps(dict(event.attributes or {}), default=str) for event in span.events]
        parts.append(json.dumps(dict(span.resource.attributes), default=str))
    return "\n".join(parts)


def test_a_request_is_one_trace_with_recall_and_upstream_children(traced, emulator) -> None:
    with Memory(traced.url, api_key=KEY) as memory:
        memory.user(USER).remember(FACT)
    traced.exporter.clear()
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": QUESTION}],
        user=USER,
        extra_headers={"traceparent": TRACEPARENT},
    )
    assert raw.headers["x-memory-status"] == "ok"

    spans = spans_of(traced.exporter, int(CLIENT_TRACE, 16), 6)
    by_name = {span.name: span for span in spans}
    request = by_name["POST /v1/chat/completions"]
    assert request.kind == SpanKind.SERVER and request.parent.span_id == int("b7ad6b7169203331", 16)
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["memproxy.memory.status"] == "ok" and request.attributes["memproxy.memory.recalled"] == 1
    recall, upstream = by_name["memproxy.recall"], by_name["memproxy.upstream"]
    assert recall.parent.span_id == request.context.span_id and upstream.parent.span_id == request.context.span_id
    for child in ("memproxy.embed", "memproxy.search", "memproxy.render"):
        assert by_name[child].parent.span_id == recall.context.span_id, child
    assert upstream.kind == SpanKind.CLIENT and recall.end_time <= upstream.start_time

    sent = emulator.requests("/v1/chat")[-1]["headers"]
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{upstream.context.span_id:016x}-01", "the upstream span's"

    said = everything_said(spans)
    for secret in (KEY, USER, QUESTION, FACT, "Kubernetes", raw.headers["x-memory-subject"]):
        assert secret not in said, secret


def test_each_extraction_job_is_a_span(traced) -> None:
    runtime = traced.app.state.runtime
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key=KEY, max_retries=0)
    traced.exporter.clear()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "I live in Lisbon."}], user=USER + "-2"
    )
    deadline = time.monotonic() + 10
    extractions: list = []
    while not extractions and time.monotonic() < deadline:
        spans = traced.exporter.get_finished_spans()
        jobs = {s.context.span_id: s for s in spans if s.name == "memproxy.job"}
        extractions = [s for s in spans if s.name == "memproxy.extraction" and s.parent.span_id in jobs]
        time.sleep(0.05)
    assert runtime.worker is not None and extractions, "the extraction, inside its job's span"
    assert extractions[0].attributes["memproxy.outcome"] == "ok"
    assert "Lisbon" not in everything_said(traced.exporter.get_finished_spans())


def test_the_bridge_sends_its_upstream_calls_traceparent(start_traced, emulator) -> None:
    bridge = start_traced(assistants="bridge", worker_in_proxy=False)
    client = openai.OpenAI(
        base_url=bridge.url + "/v1", api_key=KEY, max_retries=0, default_headers={"traceparent": TRACEPARENT}
    )
    assistant = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}], metadata={"user_id": USER})
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        stream.until_done()
    sent = [r for r in emulator.requests("/v1/responses") if r["method"] == "POST"][-1]["headers"]["traceparent"]
    upstream = {
        s.context.span_id: s
        for s in spans_of(bridge.exporter, int(CLIENT_TRACE, 16), 1)
        if s.name == "memproxy.upstream"
    }
    trace, span_id = sent.split("-")[1:3]
    assert trace == CLIENT_TRACE and int(span_id, 16) in upstream, "the bridge's own upstream span"
    assert KEY not in everything_said(bridge.exporter.get_finished_spans())


def test_without_tracing_nothing_is_imported_and_the_clients_traceparent_goes_up_untouched(
    make_proxy, emulator
) -> None:
    proxy = make_proxy()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
    client.models.with_raw_response.list(extra_headers={"traceparent": TRACEPARENT})
    assert emulator.requests("/v1/models")[-1]["headers"]["traceparent"] == TRACEPARENT
    code = (
        "import sys; from proxy.app import create_app; from proxy.config import Settings; "
        "create_app(Settings(upstream_url='http://127.0.0.1:9/v1')); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", "no OTEL_* variable: OpenTelemetry is not even imported"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_console_exporter_prints_spans_from_memproxy_serve(tmp_path, emulator_server, memory_model_dir) -> None:
    port = free_port()
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "memproxy-under-test",
        "MEMPROXY_UPSTREAM_URL": emulator_server.url + "/v1",
        "MEMPROXY_DATA_DIR": str(tmp_path),
        "MEMPROXY_EMBED_MODEL_PATH": str(memory_model_dir),
        "MEMPROXY_WORKER_IN_PROXY": "false",
        "MEMPROXY_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "memproxy serve did not start"
                time.sleep(0.1)
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    printed = out.decode()
    assert '"name": "GET /v1/{path:path}"' in printed and '"name": "memproxy.upstream"' in printed
    assert '"service.name": "memproxy-under-test"' in printed
    assert KEY not in printed


async def test_memproxy_worker_traces_each_job(tmp_path, local_embedder, memory_model_dir) -> None:
    from conftest import owner

    from proxy.cli.tasks import run_standalone
    from proxy.config import Settings
    from proxy.learn.turn import Turn, enqueue_turn
    from proxy.state.sqlite import SqliteState

    settings = Settings(
        upstream_url="http://127.0.0.1:9/v1",
        data_dir=tmp_path,
        embed_model_path=memory_model_dir,
        extractor="verbatim",
        llm_api_key=KEY,
    )
    async with await SqliteState.open(tmp_path / "state.sqlite3") as state:  # a proxy queued it
        await enqueue_turn(state, Turn(owner("tenant-a", "alice"), "chat", "chatcmpl-1", ["I live in Lyon."]))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    stats = await run_standalone(settings, once=True, embedder=local_embedder, tracer_provider=provider)

    assert stats.processed == 1
    spans = exporter.get_finished_spans()
    [job] = [s for s in spans if s.name == "memproxy.job"]
    [extraction] = [s for s in spans if s.name == "memproxy.extraction"]
    assert extraction.parent.span_id == job.context.span_id and extraction.attributes["memproxy.outcome"] == "ok"
    assert "Lyon" not in everything_said(spans) and "alice" not in everything_said(spans)
