"""Whose memories, the same rule on Responses and Assistants: header, body, conversation or thread metadata, itself.

The subject a request acted for is read from ``x-memory-subject`` (a keyed hash), compared with the hash the
same proxy gives a user named outright.
"""

from __future__ import annotations

import time

import openai
import pytest

from proxy.client import Memory

FACT = "Their company is Acme Corp and they run Kubernetes in production"
QUESTION = "What do we run in production?"
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def proxy(passthrough):
    return passthrough


def sdk(proxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app-1", max_retries=0, default_headers=headers)


def subject_hash(proxy, name: str) -> str:
    """The ``x-memory-subject`` of a request naming ``name`` in the header."""
    raw = sdk(proxy).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Memory-User": name}
    )
    return raw.headers["x-memory-subject"]


def ask(proxy, client: openai.OpenAI, **body) -> dict[str, str]:
    raw = client.responses.with_raw_response.create(model=MODEL, input=QUESTION, **body)
    return dict(raw.headers)


def test_a_conversations_metadata_names_the_user_on_responses(proxy, emulator, user) -> None:
    with Memory(proxy.url, api_key="sk-app-1") as memory:
        memory.user(user).remember(FACT)
    client = sdk(proxy)
    conversation = client.conversations.create(metadata={"user_id": user})
    headers = ask(proxy, client, conversation=conversation.id)
    assert headers["x-memory-subject"] == subject_hash(proxy, user), "the user the conversation names"
    assert headers["x-memory-status"] == "ok" and FACT in emulator.requests("/v1/responses")[-1]["body"]["instructions"]
    looked_up = [r for r in emulator.requests("/v1/conversations") if r["method"] == "GET"]
    ask(proxy, client, conversation=conversation.id)
    again = [r for r in emulator.requests("/v1/conversations") if r["method"] == "GET"]
    assert len(looked_up) == 1 and len(again) == 1, "looked up once, then remembered"


def test_precedence_on_responses_header_then_body_then_conversation_then_itself(proxy, user) -> None:
    client = sdk(proxy)
    conversation = client.conversations.create(metadata={"user_id": user})
    header = ask(proxy, sdk(proxy, **{"X-Memory-User": "from-header"}), conversation=conversation.id, user="from-body")
    assert header["x-memory-subject"] == subject_hash(proxy, "from-header")
    body = ask(proxy, client, conversation=conversation.id, safety_identifier="from-body")
    assert body["x-memory-subject"] == subject_hash(proxy, "from-body")
    metadata = ask(proxy, client, conversation=conversation.id, metadata={"user_id": "from-metadata"}, user="other")
    assert metadata["x-memory-subject"] == subject_hash(proxy, "from-metadata"), "the body's metadata before user"
    unnamed = client.conversations.create()
    itself = ask(proxy, client, conversation=unnamed.id)
    assert itself["x-memory-subject"] == subject_hash(proxy, f"conversation:{unnamed.id}")
    assert ask(proxy, client)["x-memory-status"] == "off", "no one named and no conversation: no memory"


@pytest.mark.parametrize("shape", ["proxy", "bridge"])
def test_precedence_on_runs_header_then_body_then_thread_then_itself(request, shape: str, user) -> None:
    server = request.getfixturevalue(shape)
    client = sdk(server)
    assistant = client.beta.assistants.create(model=MODEL)

    def run_subject(thread_metadata: dict, headers: dict | None = None, **body) -> str:
        thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}], metadata=thread_metadata)
        raw = client.beta.threads.runs.with_raw_response.create(
            thread_id=thread.id, assistant_id=assistant.id, extra_headers=headers, **body
        )
        client.beta.threads.runs.poll(raw.parse().id, thread_id=thread.id, poll_interval_ms=20)
        return raw.headers["x-memory-subject"]

    named = {"user_id": user}
    assert run_subject(named, {"X-Memory-User": "from-header"}) == subject_hash(server, "from-header")
    assert run_subject(named, metadata={"user_id": "from-run"}) == subject_hash(server, "from-run")
    assert run_subject(named) == subject_hash(server, user)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread.id, assistant_id=assistant.id)
    client.beta.threads.runs.poll(raw.parse().id, thread_id=thread.id, poll_interval_ms=20)
    assert raw.headers["x-memory-subject"] == subject_hash(server, f"thread:{thread.id}")


def test_a_polled_bridge_run_is_learned_for_the_user_its_creation_named(make_proxy, user) -> None:
    """The poll that sees the run finish names no one: the run is still learned for the header's user."""
    server = make_proxy(assistants="bridge", worker_in_proxy=True, extractor="verbatim")
    client = sdk(server)
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "I live in Lisbon."}])
    run = client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant.id, extra_headers={"X-Memory-User": user}
    )
    client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=20)
    with Memory(server.url, api_key="sk-app-1") as memory:
        deadline = time.monotonic() + 10
        texts: list[str] = []
        while not texts and time.monotonic() < deadline:
            texts = [m["text"] for m in memory.user(user).list()["data"]]
            time.sleep(0.05)
        assert texts == ["I live in Lisbon."]
        assert memory.user(f"thread:{thread.id}").list()["data"] == [], "not for the thread"
