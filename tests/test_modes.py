"""X-Memory (on, read, write, off) and X-Memory-Budget on every route, seen from the SDK and the upstream.

Each case teaches a user a fact, asks a question on one route in one mode, and checks the three things a
user notices: the ``x-memory-*`` headers, whether the fact reached the upstream (recall), and whether
the turn was queued for learning (capture). Runs are polled without the headers, so the mode chosen at
creation must carry over to the poll that sees the run finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import openai
import pytest

from proxy.client import Memory

FACT = "Their company is Acme Corp and they run Kubernetes in production"
QUESTION = "What do we run in production?"
MODEL = "gpt-4o-mini"


def sdk(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app-1", max_retries=0)


def teach(proxy, user: str) -> None:
    with Memory(proxy.url, api_key="sk-app-1") as memory:
        memory.user(user).remember(FACT)


def sent_upstream(emulator) -> str:
    """Every POST body the upstream received in this test, as one JSON text."""
    return json.dumps([r["body"] for r in emulator.requests() if r["method"] == "POST"])


def poll(client: openai.OpenAI, thread_id: str, run_id: str) -> None:
    """Poll a run to its end without any X-Memory header."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in ("completed", "failed", "cancelled", "expired", "incomplete"):
            assert run.status == "completed"
            return
        time.sleep(0.02)
    raise AssertionError("the run did not finish")


Headers = dict[str, str]
Call = Callable[[openai.OpenAI, str, Headers], Headers]


def chat(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    messages = [{"role": "user", "content": QUESTION}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, user=user, extra_headers=headers
    )
    raw.parse()
    return dict(raw.headers)


def chat_stream(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    messages = [{"role": "user", "content": QUESTION}]
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=messages, user=user, stream=True, extra_headers=headers
    ) as response:
        for _ in response.iter_lines():
            pass
        return dict(response.headers)


def responses(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=QUESTION, safety_identifier=user, extra_headers=headers
    )
    raw.parse()
    return dict(raw.headers)


def responses_stream(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    with client.responses.with_streaming_response.create(
        model=MODEL, input=QUESTION, safety_identifier=user, stream=True, extra_headers=headers
    ) as response:
        for _ in response.iter_lines():
            pass
        return dict(response.headers)


def run_polled(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}], metadata={"user_id": user})
    raw = client.beta.threads.runs.with_raw_response.create(
        thread_id=thread.id, assistant_id=assistant.id, extra_headers=headers
    )
    run = raw.parse()
    poll(client, thread.id, run.id)
    return dict(raw.headers)


def run_stream(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}], metadata={"user_id": user})
    with client.beta.threads.runs.with_streaming_response.create(
        thread_id=thread.id, assistant_id=assistant.id, stream=True, extra_headers=headers
    ) as response:
        for _ in response.iter_lines():
            pass
        return dict(response.headers)


def create_thread_and_run(client: openai.OpenAI, user: str, headers: Headers) -> Headers:
    assistant = client.beta.assistants.create(model=MODEL)
    thread = {"messages": [{"role": "user", "content": QUESTION}], "metadata": {"user_id": user}}
    raw = client.beta.threads.with_raw_response.create_and_run(
        assistant_id=assistant.id, thread=thread, extra_headers=headers
    )
    run = raw.parse()
    poll(client, run.thread_id, run.id)
    return dict(raw.headers)


ROUTES: dict[str, tuple[str, Call]] = {
    "chat": ("passthrough", chat),
    "chat-stream": ("passthrough", chat_stream),
    "responses": ("passthrough", responses),
    "responses-stream": ("passthrough", responses_stream),
    "passthrough-run": ("passthrough", run_polled),
    "passthrough-run-stream": ("passthrough", run_stream),
    "passthrough-create-thread-and-run": ("passthrough", create_thread_and_run),
    "bridge-run": ("bridge", run_polled),
    "bridge-run-stream": ("bridge", run_stream),
    "bridge-create-thread-and-run": ("bridge", create_thread_and_run),
}

# mode -> (recalls, captures)
MODES = {"on": (True, True), "read": (True, False), "write": (False, True), "off": (False, False)}


def captured(runtime) -> int:
    return runtime.counters["turns.captured"]


def learned_since(runtime, before: int, expected: int) -> int:
    """Turns queued since ``before``: waits for ``expected`` of them, then a moment for any more."""
    deadline = time.monotonic() + 5
    while captured(runtime) < before + expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # a hooked answer ends once its turn is queued: a turn not queued by now never is
    return captured(runtime) - before


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("route", list(ROUTES))
def test_each_mode_on_each_route(request, emulator, user, route: str, mode: str) -> None:
    shape, call = ROUTES[route]
    proxy = request.getfixturevalue(shape)
    runtime = proxy.app.state.runtime
    teach(proxy, user)
    before = captured(runtime)
    headers = call(sdk(proxy), user, {"X-Memory": mode.upper() if mode == "read" else mode})
    recalls, captures = MODES[mode]

    assert (FACT in sent_upstream(emulator)) is recalls, "the fact reached the upstream iff the mode recalls"
    assert "x-memory" not in json.dumps([r["headers"] for r in emulator.requests()]).lower()
    expected = 1 if captures else 0
    assert learned_since(runtime, before, expected) == expected, "learned iff the mode captures"
    if mode == "off":
        assert headers["x-memory-status"] == "off" and headers["x-memory-recalled"] == "0"
        assert "x-memory-subject" not in headers and "x-memory-reason" not in headers
        return
    assert headers["x-memory-mode"] == mode
    assert headers["x-memory-status"] == ("ok" if recalls else "none")
    assert headers["x-memory-recalled"] == ("1" if recalls else "0")
    assert headers["x-memory-subject"].startswith("s_") and "x-memory-reason" not in headers


@pytest.mark.parametrize("route", ["chat", "responses-stream", "bridge-run", "bridge-run-stream"])
def test_an_invalid_mode_turns_memory_off_and_says_why(request, emulator, user, route: str) -> None:
    shape, call = ROUTES[route]
    proxy = request.getfixturevalue(shape)
    runtime = proxy.app.state.runtime
    teach(proxy, user)
    before, counted = captured(runtime), runtime.counters["memory_off.invalid-mode"]
    headers = call(sdk(proxy), user, {"X-Memory": "false"})  # the answer comes back: the request never fails
    assert headers["x-memory-status"] == "off" and headers["x-memory-reason"] == "invalid-mode"
    assert FACT not in sent_upstream(emulator)
    assert learned_since(runtime, before, 0) == 0, "nothing learned the client did not ask for"
    assert runtime.counters["memory_off.invalid-mode"] == counted + 1, "counted once per request"


@pytest.mark.parametrize("route", ["chat", "responses", "bridge-run-stream", "passthrough-create-thread-and-run"])
def test_the_budget_header(request, emulator, user, route: str) -> None:
    shape, call = ROUTES[route]
    proxy = request.getfixturevalue(shape)
    teach(proxy, user)
    client = sdk(proxy)

    none = call(client, user, {"X-Memory-Budget": "0"})
    assert (none["x-memory-status"], none["x-memory-recalled"]) == ("none", "0") and "x-memory-reason" not in none
    assert FACT not in sent_upstream(emulator), "a budget of 0 injects nothing"

    tight = call(client, user, {"X-Memory-Budget": "30"})  # the block's frame alone takes more
    assert tight["x-memory-recalled"] == "0" and FACT not in sent_upstream(emulator)

    counters = proxy.app.state.runtime.counters
    before = counters["memory_budget.invalid-budget"], counters["memory_budget.budget-capped"]
    for value, reason in (("lots", "invalid-budget"), ("-5", "invalid-budget"), ("99999999", "budget-capped")):
        emulator.clear_requests()
        headers = call(client, user, {"X-Memory-Budget": value})
        assert headers["x-memory-reason"] == reason, value
        assert headers["x-memory-status"] == "ok" and FACT in sent_upstream(emulator), "memory goes on"
    after = counters["memory_budget.invalid-budget"], counters["memory_budget.budget-capped"]
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1), "counted once per request"


def test_a_budget_is_bounded_by_the_configured_maximum(make_proxy, emulator, user) -> None:
    proxy = make_proxy(memory_block_tokens=1000, memory_block_tokens_max=30)
    teach(proxy, user)
    headers = chat(sdk(proxy), user, {"X-Memory-Budget": "500"})
    assert headers["x-memory-reason"] == "budget-capped" and headers["x-memory-recalled"] == "0"
    headers = chat(sdk(proxy), user, {})
    assert "x-memory-reason" not in headers and headers["x-memory-recalled"] == "0", "the default is capped too"
    assert FACT not in sent_upstream(emulator)


def test_the_bridge_answers_with_memory_headers_on_every_route(bridge, emulator, user) -> None:
    client = sdk(bridge)
    assistant = client.beta.assistants.with_raw_response.create(model=MODEL)
    assert assistant.headers["x-memory-status"] == "off", "no run, no memory: it says so"
    raw = client.beta.threads.with_raw_response.create(extra_headers={"X-Memory": "maybe"})
    assert raw.headers["x-memory-reason"] == "invalid-mode"
    with pytest.raises(openai.NotFoundError) as refused:  # a refusal says it too
        client.beta.threads.runs.create(
            thread_id="thread_nope", assistant_id="asst_nope", extra_headers={"X-Memory": "?"}
        )
    assert refused.value.response.headers["x-memory-reason"] == "invalid-mode"
