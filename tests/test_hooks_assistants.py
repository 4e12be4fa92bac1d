"""Memory around Assistants threads and runs, passthrough mode (the upstream speaks Assistants v2)."""

from __future__ import annotations

import time

import openai
import pytest

from proxy.client import Memory

FACT = "Their company is Acme Corp and they run Kubernetes in production"
QUESTION = "What do we run in production?"


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy(assistants="passthrough")


@pytest.fixture
def user(request) -> str:
    return f"user-{request.node.name}"


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app-1", max_retries=0)


@pytest.fixture
def assistant(client):
    return client.beta.assistants.create(model="gpt-4o-mini", instructions="You are the ops helper.")


def teach(proxy, user: str, text: str = FACT) -> None:
    with Memory(proxy.url, api_key="sk-app-1") as memory:
        memory.user(user).remember(text)


def sent_run(emulator) -> dict:
    return [r for r in emulator.requests() if r["method"] == "POST" and r["path"].endswith("/runs")][-1]["body"]


def test_a_new_thread_of_the_same_user_gets_the_fact(proxy, client, emulator, assistant, user) -> None:
    teach(proxy, user)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}], metadata={"user_id": user})
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, additional_instructions="Answer briefly.", poll_interval_ms=20
    )
    assert run.status == "completed"
    sent = sent_run(emulator)["additional_instructions"]
    assert sent.startswith("Answer briefly.\n\n<memories>") and FACT in sent
    answer = client.beta.threads.messages.list(thread.id).data[0].content[0].text.value
    assert FACT in answer  # the emulator restates its instructions: the model saw the fact


def test_the_thread_owner_is_remembered_so_runs_need_no_lookup(proxy, client, emulator, assistant, user) -> None:
    teach(proxy, user)
    thread = client.beta.threads.create(metadata={"user_id": user})
    client.beta.threads.messages.create(thread.id, role="user", content=QUESTION)
    emulator.clear_requests()
    client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert FACT in sent_run(emulator)["additional_instructions"]
    assert [r["method"] for r in emulator.requests()] == ["POST"]  # no GET of the thread or its messages


def test_a_thread_the_proxy_never_saw_is_looked_up_once(make_proxy, emulator, user) -> None:
    proxy = make_proxy(assistants="passthrough")
    direct = openai.OpenAI(base_url=emulator.base_url, api_key="sk-app-1", max_retries=0)
    assistant = direct.beta.assistants.create(model="gpt-4o-mini")
    thread = direct.beta.threads.create(messages=[{"role": "user", "content": QUESTION}], metadata={"user_id": user})
    teach(proxy, user)
    through = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app-1", max_retries=0)
    through.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert FACT in sent_run(emulator)["additional_instructions"]
    emulator.clear_requests()
    through.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert FACT in sent_run(emulator)["additional_instructions"]
    assert not [r for r in emulator.requests() if r["method"] == "GET" and r["path"] == f"/v1/threads/{thread.id}"]


def test_create_and_run_keeps_the_assistants_own_instructions(proxy, client, emulator, assistant, user) -> None:
    teach(proxy, user)
    client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": QUESTION}], "metadata": {"user_id": user}},
        poll_interval_ms=20,
    )
    sent = [r for r in emulator.requests("/v1/threads/runs")][-1]["body"]["instructions"]
    assert sent.startswith("You are the ops helper.\n\n<memories>") and FACT in sent


def test_another_user_of_the_same_app_never_sees_it(proxy, client, emulator, assistant, user) -> None:
    teach(proxy, user)
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": QUESTION}], metadata={"user_id": user + "-colleague"}
    )
    client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert FACT not in sent_run(emulator).get("additional_instructions", "")


def captured_count(runtime, at_least: int) -> int:
    deadline = time.monotonic() + 5
    while runtime.counters["turns.captured"] < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return runtime.counters["turns.captured"]


def test_polled_and_streamed_runs_are_captured_once_each(make_proxy, emulator, user) -> None:
    proxy = make_proxy(assistants="passthrough")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app-1", max_retries=0)
    assistant = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(metadata={"user_id": user})
    client.beta.threads.messages.create(thread.id, role="user", content="I prefer Python for scripting.")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)  # a second poll adds nothing
    client.beta.threads.messages.create(thread.id, role="user", content="I live in Lisbon.")
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        stream.until_done()
    assert captured_count(proxy.app.state.runtime, 2) == 2
    time.sleep(0.2)
    assert proxy.app.state.runtime.counters["turns.captured"] == 2


def test_a_stream_the_client_abandons_is_followed_to_the_end_and_captured(make_proxy, emulator, user) -> None:
    proxy = make_proxy(assistants="passthrough")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app-1", max_retries=0)
    assistant = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(metadata={"user_id": user})
    client.beta.threads.messages.create(thread.id, role="user", content="I am allergic to peanuts.")
    slow = {"x-emulator-fault": "event_delay=0.3"}
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, extra_headers=slow) as events:
        next(iter(events))  # the client reads the first event and goes away
    assert captured_count(proxy.app.state.runtime, 1) == 1
