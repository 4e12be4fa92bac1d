"""Memory is an enhancement, the upstream call is the product: no memory fault reaches the client.

Each test breaks one real part (the embedder's upstream, the Qdrant server, Redis, the upstream
model) and checks that the client's request went upstream exactly as sent, the answer came back
intact, and the fault shows only as ``x-memory-status: degraded`` plus a counter.
"""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest
from conftest import redis_server

from proxy.client import Memory

ASK = {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "What do we run in production?"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ask(proxy, **headers: str):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app", max_retries=0, default_headers=headers or None)
    return client.responses.with_raw_response.create(**ASK, safety_identifier="u1")


def assert_untouched(raw, emulator) -> None:
    sent = emulator.requests("/v1/responses")[-1]["body"]
    assert sent == {**ASK, "safety_identifier": "u1"}
    assert raw.parse().status == "completed"
    assert raw.headers["x-memory-status"] == "degraded"


def test_a_failing_embedder_sends_the_request_unchanged(make_proxy, emulator) -> None:
    proxy = make_proxy(embedder="upstream", memory_recall_deadline_ms=10_000)  # the cause, not the clock
    with Memory(proxy.url, api_key="sk-app") as memory:
        memory.user("u1").remember("Runs Kubernetes in production")
    emulator.fault(path="/v1/embeddings", status=500, times=0)
    raw = ask(proxy)
    emulator.clear_faults()
    assert_untouched(raw, emulator)
    assert proxy.app.state.runtime.counters["degraded.recall_error"] == 1


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # qdrant-client says so: there is none
def test_an_unreachable_qdrant_leaves_forwarding_intact(make_proxy, emulator) -> None:
    proxy = make_proxy(qdrant_url=f"http://127.0.0.1:{closed_port()}", single_replica=True, reconnect_backoff=0.05)
    assert_untouched(ask(proxy), emulator)
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 200, "ready to forward: that needs no Qdrant"
    body = ready.json()
    assert body["status"] == "degraded" and body["memory_ready"] is False
    assert body["checks"]["forwarding"] == "ok" and body["checks"]["state"] == "ok"
    assert "Qdrant" in body["checks"]["memory"], body["checks"]["memory"]
    memory = httpx.get(proxy.url + "/readyz/memory")
    assert memory.status_code == 503 and memory.json()["checks"]["memory"] == body["checks"]["memory"]
    api = httpx.get(proxy.url + "/memory/v1/users/u1/memories", headers={"authorization": "Bearer sk-app"})
    assert api.status_code == 503 and api.json()["error"]["code"] == "memory_unavailable"
    runtime = proxy.app.state.runtime
    tries = runtime.counters["retries.memory"]
    time.sleep(0.5)
    assert runtime.counters["retries.memory"] > tries, "the memory start is retried in the background"
    assert runtime.memory is None and runtime.worker is None
    proxy.stop()  # its retries would go on for the whole session


def test_redis_going_away_fails_no_request(make_proxy, emulator) -> None:
    with redis_server() as (url, process):
        proxy = make_proxy(redis_url=url, secret="shared-secret", assistants="passthrough", single_replica=True)
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app", max_retries=0)
        assistant = client.beta.assistants.create(model="gpt-4o-mini")
        thread = client.beta.threads.create(metadata={"user_id": "u1"})
        process.kill()
        process.wait()
        message = client.beta.threads.messages.with_raw_response.create(thread.id, role="user", content="Hi there")
        run = client.beta.threads.runs.with_raw_response.create(thread_id=thread.id, assistant_id=assistant.id)
        answer = ask(proxy)
    assert message.headers["x-memory-status"] == "degraded" and message.parse().content[0].text.value == "Hi there"
    assert run.headers["x-memory-status"] == "degraded" and run.parse().status in ("queued", "in_progress", "completed")
    assert "additional_instructions" not in emulator.requests("/v1/threads/")[-2]["body"]
    assert answer.parse().status == "completed"
    counters = proxy.app.state.runtime.counters
    deadline = time.monotonic() + 10  # the answer's turn is spooled: Redis is gone
    while counters["turns.spooled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counters["degraded.hook_error"] >= 2, counters
    # the thread's capture (who it belongs to) was stored before its answer ended, so before the kill
    assert counters["degraded.capture_error"] == 0, counters
    assert counters["turns.spooled"] == 1, "the finished response waits in the spool for Redis (test_fail_open.py)"
    proxy.stop()  # its spool would retry Redis for the whole session


def test_a_failed_capture_does_not_mark_other_requests_degraded(make_proxy, emulator) -> None:
    """The per-request decision is a value: one request's fault never changes another's headers."""
    with redis_server() as (url, process):
        proxy = make_proxy(redis_url=url, secret="shared-secret", assistants="passthrough", single_replica=True)
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app", max_retries=0)
        assistant = client.beta.assistants.create(model="gpt-4o-mini")
        thread = client.beta.threads.create()
        run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        upstream = openai.OpenAI(base_url=emulator.base_url, api_key="sk-app", max_retries=0)
        while upstream.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status != "completed":
            time.sleep(0.05)
        before = ask(proxy, **{"X-Memory": "off"})
        process.kill()
        process.wait()
        polled = client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread.id)
        time.sleep(0.3)  # the poll's capture runs after its answer and fails: the state store is gone
        after = ask(proxy, **{"X-Memory": "off"})
    assert proxy.app.state.runtime.counters["degraded.capture_error"] >= 1
    assert polled.parse().id == run.id
    assert before.headers["x-memory-status"] == after.headers["x-memory-status"] == "off"
    proxy.stop()


def test_an_upstream_error_reaches_the_client_as_it_was_and_teaches_nothing(make_proxy, emulator) -> None:
    proxy = make_proxy()
    emulator.fault(path="/v1/responses", status=503, message="The engine is overloaded.")
    with pytest.raises(openai.InternalServerError) as caught:
        ask(proxy)
    assert caught.value.status_code == 503
    assert caught.value.body["message"] == "The engine is overloaded."
    time.sleep(0.2)
    assert proxy.app.state.runtime.counters["turns.captured"] == 0
