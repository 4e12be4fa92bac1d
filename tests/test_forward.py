"""The proxy is transparent: what a client sends reaches the upstream, and back, byte for byte.

Each test names a classic reverse-proxy pitfall and fails if the proxy falls into it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import time

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from proxy.config import Settings
from proxy.forward import Forwarder, make_client, make_transport
from proxy.server import ServerThread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three four five six"}]}


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy(keepalive_interval=0.3)


@pytest.fixture
def http(proxy):
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        yield client


def test_hop_by_hop_headers_are_dropped_and_the_rest_kept(http, emulator, emulator_server):
    headers = {
        "authorization": "Bearer sk-test",
        "connection": "keep-alive, x-private-hop",
        "x-private-hop": "1",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "proxy-authorization": "Basic c2VjcmV0",
        "openai-beta": "assistants=v2",
        "openai-organization": "org-1",
        "openai-project": "proj-1",
        "x-stainless-lang": "python",
        "idempotency-key": "idem-1",
    }
    assert http.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    received = emulator.requests("/v1/chat")[-1]["headers"]
    for dropped in ("x-private-hop", "keep-alive", "te", "proxy-authorization"):
        assert dropped not in received
    for kept in ("openai-beta", "openai-organization", "openai-project", "x-stainless-lang", "idempotency-key"):
        assert received[kept] == headers[kept]
    assert received["authorization"] == "Bearer sk-test"
    assert received["host"] == emulator_server.url.removeprefix("http://")


def test_upstream_response_headers_reach_the_client(http, emulator):
    extra = {"retry-after": "2", "retry-after-ms": "2000", "x-ratelimit-remaining-requests": "7"}
    emulator.fault(path="/chat/completions", status=429, headers=extra)
    response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    for name, value in extra.items():
        assert response.headers[name] == value
    assert response.headers["x-request-id"] == emulator.requests()[-1]["request_id"]
    assert len(response.headers.get_list("date")) == 1 and len(response.headers.get_list("server")) == 1
    assert "openai-processing-ms" in response.headers


def test_gzip_bodies_are_relayed_compressed_and_decode_once(http, emulator):
    emulator.fault(path="/chat/completions", gzip=True)
    with http.stream("POST", "/v1/chat/completions", json=CHAT, headers={"accept-encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["object"] == "chat.completion"


def test_sdk_reads_gzip_through_the_proxy(proxy, emulator):
    emulator.fault(path="/models", gzip=True)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    assert any(model.id == "gpt-4o-mini" for model in client.models.list())


def test_rewritten_body_gets_a_fresh_content_length(emulator_server, emulator, tmp_path):
    """A hook that rewrites a body must not send the client's stale Content-Length upstream."""
    settings = Settings(upstream_url=emulator_server.url + "/v1", data_dir=tmp_path)
    longer = json.dumps({**CHAT, "messages": CHAT["messages"] * 3}).encode()

    async def rewrite(request: Request):
        await request.body()
        return await request.app.state.forwarder.forward(request, body=longer)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        transport = make_transport(settings)
        async with make_client(settings, transport) as client:
            app.state.forwarder = Forwarder(client, transport, settings)
            yield

    app = Starlette(routes=[Route("/v1/{path:path}", rewrite, methods=["POST"])], lifespan=lifespan)
    with ServerThread(app) as server:
        response = httpx.post(server.url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    received = emulator.requests("/v1/chat")[-1]
    assert received["headers"]["content-length"] == str(len(longer))
    assert len(received["body"]["messages"]) == 3


def test_sse_events_arrive_as_the_upstream_sends_them(http, emulator):
    emulator.fault(path="/chat/completions", event_delay=0.25)
    started = time.monotonic()
    arrivals = []
    with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert len(arrivals) >= 6
    # Buffered, every event would land at the end together; streamed, they are spread out.
    assert arrivals[0] < arrivals[-1] - 1.0


def test_silent_streams_get_keepalive_comments_between_events(proxy, emulator):
    emulator.fault(path="/chat/completions", event_delay=0.8)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30) as r:
        text = b"".join(r.iter_raw()).decode()
    assert ": keepalive" in text
    events = [block for block in text.split("\n\n") if block.strip()]
    # A comment never lands inside an event: every block is either a comment or a whole event.
    assert all(block.startswith((": keepalive", "data: ")) for block in events)
    assert events[-1] == "data: [DONE]"


def test_sdk_streams_through_keepalives(proxy, emulator):
    emulator.fault(path="/chat/completions", event_delay=0.4)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    stream = client.chat.completions.create(**CHAT, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "one two three four five six" in text


def test_client_disconnect_closes_the_upstream_stream(make_proxy, emulator):
    server = make_proxy()
    forwarder = server.app.state.runtime.forwarder
    slow = {"x-emulator-fault": "event_delay=1.0"}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=slow
    ) as response:
        lines = response.iter_lines()  # held: a dropped generator would close the response itself
        next(lines)
        time.sleep(0.3)
        assert forwarder.open_responses == 1
    # The stream has ~10 more events a second apart: only a disconnect-driven close ends it early.
    deadline = time.monotonic() + 3
    while forwarder.open_responses and time.monotonic() < deadline:
        time.sleep(0.05)
    assert forwarder.open_responses == 0
    assert all(
        connection.is_idle() or connection.is_closed() for connection in forwarder.client._transport._pool.connections
    )


def test_multipart_upload_passes_with_its_boundary_intact(proxy, emulator):
    payload = b"".join(b'{"i": %d}\n' % i for i in range(200_000))  # ~2.5 MB
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    uploaded = client.files.create(file=("big.jsonl", payload), purpose="batch")
    received = emulator.requests("/v1/files")[-1]
    assert received["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert uploaded.bytes == len(payload)
    content = client.files.content(uploaded.id).read()
    assert hashlib.sha256(content).digest() == hashlib.sha256(payload).digest()


def test_malformed_json_is_forwarded_untouched(http, emulator):
    broken = b'{"model": "gpt-4o-mini", "messages": [ '
    response = http.post("/v1/chat/completions", content=broken, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "parse the JSON body" in response.json()["error"]["message"]
    assert emulator.requests("/v1/chat")[-1]["body"] == broken.decode()


def test_dropped_upstream_stream_is_an_error_for_the_client(proxy, emulator):
    emulator.fault(path="/chat/completions", drop_after=2)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in client.chat.completions.create(**CHAT, stream=True):
            pass


@pytest.fixture(scope="module")
def impatient_proxy(make_proxy):
    return make_proxy(read_timeout=0.3)


def test_timed_out_post_is_a_504_never_retried(impatient_proxy, emulator):
    emulator.fault(path="/chat/completions", delay=1.0)
    response = httpx.post(impatient_proxy.url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_timed_out_get_is_a_504_safe_to_retry(impatient_proxy, emulator):
    emulator.fault(path="/models", delay=1.0)
    response = httpx.get(impatient_proxy.url + "/v1/models")
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "true"


def test_sdk_does_not_retry_a_timed_out_post(impatient_proxy, emulator):
    emulator.fault(path="/chat/completions", delay=1.0, times=0)
    client = openai.OpenAI(base_url=impatient_proxy.url + "/v1", api_key="sk-test", max_retries=3)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(**CHAT)
    emulator.clear_faults()
    assert len(emulator.requests("/v1/chat")) == 1
