"""Memory on the Responses and Chat routes, seen from the SDK and from what reached the upstream."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from proxy.client import Memory

FACT = "Their company is Acme Corp and they run Kubernetes in production"


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy()


@pytest.fixture
def remembered(proxy, user) -> str:
    """The user's fact, taught through the memory API under the application's own key."""
    with Memory(proxy.url, api_key="sk-app-1") as memory:
        memory.user(user).remember(FACT)
    return user


def sdk(proxy, key: str = "sk-app-1", **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, default_headers=headers or None)


def upstream_body(emulator, path: str) -> dict:
    return emulator.requests(path)[-1]["body"]


def test_responses_instructions_carry_the_users_memories(proxy, emulator, remembered) -> None:
    raw = sdk(proxy).responses.with_raw_response.create(
        model="gpt-4o-mini",
        instructions="Be concise.",
        input="What do we run in production?",
        safety_identifier=remembered,
    )
    sent = upstream_body(emulator, "/v1/responses")["instructions"]
    assert sent.startswith("Be concise.\n\n<memories>")
    assert FACT in sent
    assert raw.headers["x-memory-status"] == "ok" and raw.headers["x-memory-recalled"] == "1"
    assert raw.headers["x-memory-subject"].startswith("s_") and remembered not in raw.headers["x-memory-subject"]
    assert FACT in raw.parse().output_text  # the emulator restates its instructions: the model saw the fact


def test_chat_system_message_carries_the_users_memories(proxy, emulator, remembered) -> None:
    sdk(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "What do we run in production?"},
        ],
        user=remembered,
    )
    messages = upstream_body(emulator, "/v1/chat")["messages"]
    assert messages[0]["content"].startswith("You are helpful.\n\n<memories>") and FACT in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "What do we run in production?"}


def test_chat_without_a_system_message_gets_one(proxy, emulator, remembered) -> None:
    sdk(proxy, **{"X-Memory-User": remembered}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Remind me what we run in production"}]
    )
    messages = upstream_body(emulator, "/v1/chat")["messages"]
    assert messages[0]["role"] == "system" and FACT in messages[0]["content"]
    assert "x-memory-user" not in emulator.requests("/v1/chat")[-1]["headers"]


def test_other_users_and_other_tenants_never_see_it(proxy, emulator, remembered) -> None:
    question = {"model": "gpt-4o-mini", "input": "What do we run in production?"}
    sdk(proxy).responses.create(**question, safety_identifier="someone-else")
    assert "instructions" not in upstream_body(emulator, "/v1/responses")
    raw = sdk(proxy, key="sk-other-app").responses.with_raw_response.create(**question, safety_identifier=remembered)
    assert "instructions" not in upstream_body(emulator, "/v1/responses")
    assert raw.headers["x-memory-status"] == "none"


def test_memory_off_and_anonymous_chat_leave_the_request_untouched(proxy, emulator, remembered) -> None:
    messages = [{"role": "user", "content": "What do we run in production?"}]
    raw = sdk(proxy, **{"X-Memory": "off"}).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, user=remembered
    )
    assert upstream_body(emulator, "/v1/chat")["messages"] == messages
    assert raw.headers["x-memory-status"] == "off"
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert upstream_body(emulator, "/v1/chat")["messages"] == messages
    assert raw.headers["x-memory-status"] == "off"


def test_a_conversation_is_its_own_subject_when_no_user_is_named(proxy, emulator) -> None:
    client = sdk(proxy)
    conversation = client.conversations.create()
    with Memory(proxy.url, api_key="sk-app-1") as memory:
        memory.user(f"conversation:{conversation.id}").remember("The project codename is Bluebird")
    client.responses.create(model="gpt-4o-mini", input="What is the project codename?", conversation=conversation.id)
    assert "Bluebird" in upstream_body(emulator, "/v1/responses")["instructions"]


def test_recall_past_its_deadline_degrades_and_sends_the_request_unchanged(make_proxy, emulator, user) -> None:
    slow = make_proxy(memory_recall_deadline_ms=0.001)
    with Memory(slow.url, api_key="sk-app-1") as memory:
        memory.user(user).remember(FACT)
    raw = sdk(slow).responses.with_raw_response.create(
        model="gpt-4o-mini", instructions="Be concise.", input="What do we run in production?", safety_identifier=user
    )
    assert upstream_body(emulator, "/v1/responses")["instructions"] == "Be concise."
    assert raw.headers["x-memory-status"] == "degraded"
    assert raw.parse().status == "completed"
    assert slow.app.state.runtime.counters["degraded.recall_timeout"] >= 1


def wait_for_captures(runtime, at_least: int) -> None:
    deadline = time.monotonic() + 5
    while runtime.counters["turns.captured"] < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime.counters["turns.captured"] >= at_least


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_each_finished_turn_is_captured(make_proxy, emulator, user, stream) -> None:
    proxy = make_proxy()
    runtime = proxy.app.state.runtime
    client = sdk(proxy)
    answer = client.responses.create(
        model="gpt-4o-mini", input="I moved to Lyon.", safety_identifier=user, stream=stream
    )
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "My dog is Rex."}], user=user, stream=stream
    )
    if stream:
        list(answer), list(chat)
    wait_for_captures(runtime, 2)
    time.sleep(0.2)
    assert runtime.counters["turns.captured"] == 2


def test_an_abandoned_stream_is_not_captured_as_a_finished_turn(make_proxy, emulator, user) -> None:
    proxy = make_proxy()
    slow = sdk(proxy, **{"x-emulator-fault": "event_delay=0.5"})
    stream = slow.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "My dog is Rex and I live in Lyon."}],
        user=user,
        stream=True,
    )
    next(iter(stream))
    stream.close()
    time.sleep(0.5)
    assert proxy.app.state.runtime.counters["turns.captured"] == 0


async def test_captured_turns_carry_both_sides_and_no_key(make_proxy, emulator, user) -> None:
    proxy = make_proxy()
    runtime = proxy.app.state.runtime
    client = sdk(proxy)
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "My dog is called Rex."}], user=user, stream=True
    ):
        pass
    client.responses.create(model="gpt-4o-mini", input="I moved to Lyon last year.", safety_identifier=user)
    wait_for_captures(runtime, 2)
    jobs = await runtime.state.claim("test", count=10)
    turns = sorted((job.payload for job in jobs), key=lambda turn: turn["route"])
    assert [t["route"] for t in turns] == ["chat", "responses"]
    assert turns[0]["user"] == ["My dog is called Rex."] and "Rex" in turns[0]["assistant"][0]
    assert turns[1]["user"] == ["I moved to Lyon last year."] and turns[1]["source"]["response_id"].startswith("resp")
    assert all(t["subject"] == user for t in turns)
    assert "sk-app-1" not in str([job.payload for job in jobs])


async def test_a_background_response_is_captured_when_a_poll_sees_it_finish(make_proxy, emulator, user) -> None:
    proxy = make_proxy()
    runtime = proxy.app.state.runtime
    client = sdk(proxy)
    response = client.responses.create(
        model="gpt-4o-mini", input="I work night shifts.", safety_identifier=user, background=True
    )
    assert response.status == "queued"
    while response.status != "completed":
        await asyncio.sleep(0.02)
        response = client.responses.retrieve(response.id)
    client.responses.retrieve(response.id)  # seen completed twice, captured once
    wait_for_captures(runtime, 1)
    await asyncio.sleep(0.2)
    assert runtime.counters["turns.captured"] == 1
    [job] = await runtime.state.claim("test", count=5)
    assert job.payload["user"] == ["I work night shifts."] and "night shifts" in job.payload["assistant"][0]
