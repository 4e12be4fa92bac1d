"""A hooked answer ends only once its turn is queued: a crash after the client has it loses nothing.

The end of the answer (a stream's closing chunk, a JSON body's last chunk) waits for the capture, at
most ``MEMPROXY_MEMORY_CAPTURE_DEADLINE_MS``; a state store that hangs (a Redis stopped with SIGSTOP)
costs an answer that deadline, never more, and the capture goes on behind it.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
from conftest import redis_server

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "I keep bees on the roof."}]}


def chat(url: str, user: str, stream: bool) -> httpx.Response:
    body = {**CHAT, "user": user, "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-order"}, timeout=30)


def test_the_turn_is_queued_before_the_client_has_the_whole_answer(make_proxy, emulator) -> None:
    proxy = make_proxy()
    runtime = proxy.app.state.runtime
    try:
        for n, stream in enumerate((False, True, False, True), start=1):
            answer = chat(proxy.url, f"order-{n}", stream)
            assert answer.status_code == 200
            assert answer.text.rstrip().endswith("[DONE]") if stream else answer.json()["id"]
            # read the moment the client has the answer: no waiting, no polling
            assert runtime.counters["turns.captured"] == n, f"turn {n} not queued when its answer ended"
        assert runtime.forwarder.captures_late == 0
    finally:
        proxy.stop()


def test_a_hanging_state_store_costs_an_answer_the_capture_deadline_and_no_more(make_proxy, emulator) -> None:
    with redis_server() as (url, process):
        proxy = make_proxy(redis_url=url, secret="order-secret", single_replica=True, memory_capture_deadline_ms=300)
        runtime = proxy.app.state.runtime
        try:
            os.kill(process.pid, signal.SIGSTOP)  # Redis hangs: every call waits, none fails
            try:
                started = time.monotonic()
                answer = chat(proxy.url, "order-hang", stream=False)
                took = time.monotonic() - started
            finally:
                os.kill(process.pid, signal.SIGCONT)
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
            assert 0.3 <= took < 0.3 + 0.15 + 1.0, f"the answer took {took:.2f}s (capture 0.3 s, recall 0.15 s)"
            assert runtime.forwarder.captures_late == 1
            deadline = time.monotonic() + 10
            while runtime.counters["turns.captured"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert runtime.counters["turns.captured"] == 1, "the capture went on behind the answer"
            late = httpx.get(proxy.url + "/metrics").text
            assert "memproxy_turns_captured_late_total 1.0" in late
        finally:
            proxy.stop()
