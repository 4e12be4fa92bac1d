"""The product, end to end: what a user says in one conversation is known in the next one.

Real SDK, real proxy with its in-process extraction worker, the emulator as the model (its
structured-output answer lists the user's first-person statements, so extraction adds them).
For a contradiction the test plays the extraction model's decision (an update), since the
emulator does not reason; the proxy must apply it and keep the history.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import openai
import pytest

from proxy.client import Memory

SAID = "My company is Acme Corp and we run Kubernetes in production."
QUESTION = "What do we run in production?"
MODEL = "gpt-4o-mini"


class Mode:
    """How one API family tells a fact, asks a question, and where the upstream saw the memory."""

    def __init__(self, name: str, assistants: str, say: Callable, seen: Callable) -> None:
        self.name, self.assistants, self.say, self.seen = name, assistants, say, seen


def _run_turn(client: openai.OpenAI, user: str, text: str, stream: bool) -> None:
    assistant = client.beta.assistants.create(model=MODEL, instructions="You help with ops.")
    thread = client.beta.threads.create(metadata={"user_id": user})
    client.beta.threads.messages.create(thread.id, role="user", content=text)
    if stream:
        with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as events:
            events.until_done()
    else:
        client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)


def _responses_turn(client: openai.OpenAI, user: str, text: str, stream: bool) -> None:
    answer = client.responses.create(model=MODEL, input=text, safety_identifier=user, stream=stream)
    if stream:
        list(answer)


def _chat_turn(client: openai.OpenAI, user: str, text: str, stream: bool) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], user=user, stream=stream
    )
    if stream:
        list(answer)


def _last_post(emulator, suffix: str) -> dict:
    return [r for r in emulator.requests() if r["method"] == "POST" and r["path"].endswith(suffix)][-1]["body"]


def _client_chat(emulator) -> dict:
    """The application's last chat call; the worker's extraction calls go to the same endpoint, without ``user``."""
    posts = [r["body"] for r in emulator.requests("/v1/chat/completions") if r["method"] == "POST"]
    return [body for body in posts if "user" in body][-1]


MODES = [
    Mode(
        "assistants-passthrough",
        "passthrough",
        _run_turn,
        lambda emulator: _last_post(emulator, "/runs").get("additional_instructions", ""),
    ),
    Mode(
        "assistants-bridge",
        "bridge",
        _run_turn,
        lambda emulator: _last_post(emulator, "/v1/responses").get("instructions", ""),
    ),
    Mode(
        "responses",
        "passthrough",
        _responses_turn,
        lambda emulator: _last_post(emulator, "/v1/responses").get("instructions", ""),
    ),
    Mode("chat", "passthrough", _chat_turn, lambda emulator: _client_chat(emulator)["messages"][0]["content"]),
]


def wait_for_memories(proxy, key: str, user: str, count: int) -> list[dict]:
    with Memory(proxy.url, api_key=key) as memory:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = memory.user(user).list(include_deleted=True)["data"]
            if len(found) >= count:
                return found
            time.sleep(0.05)
    raise AssertionError(f"{count} memories of {user} never appeared")


@pytest.fixture(scope="module")
def proxies(make_proxy):
    started = {
        kind: make_proxy(assistants=kind, extractor="llm", worker_in_proxy=True) for kind in ("passthrough", "bridge")
    }
    yield started
    for proxy in started.values():  # their workers must not call the shared emulator during later tests
        proxy.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_a_fact_told_once_is_known_in_a_new_conversation(mode: Mode, stream: bool, proxies, emulator) -> None:
    proxy, key, user = proxies[mode.assistants], f"sk-{uuid.uuid4().hex}", "u-ann"
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    mode.say(client, user, SAID, stream)
    [memory] = wait_for_memories(proxy, key, user, 1)
    assert "Acme Corp" in memory["text"]

    mode.say(client, user, QUESTION, stream)
    assert "Acme Corp" in mode.seen(emulator)

    mode.say(client, "u-bob", QUESTION, stream)  # a colleague, same application
    assert "Acme Corp" not in mode.seen(emulator)
    stranger = openai.OpenAI(base_url=proxy.url + "/v1", api_key=f"sk-{uuid.uuid4().hex}", max_retries=0)
    mode.say(stranger, user, QUESTION, stream)  # same user name, another application
    assert "Acme Corp" not in mode.seen(emulator)


@pytest.mark.parametrize("mode", [m for m in MODES if m.name != "chat"], ids=lambda mode: mode.name)
def test_a_contradiction_updates_the_memory_and_keeps_its_history(mode: Mode, proxies, emulator) -> None:
    proxy, key, user = proxies[mode.assistants], f"sk-{uuid.uuid4().hex}", "u-cleo"
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    mode.say(client, user, SAID, False)
    [original] = wait_for_memories(proxy, key, user, 1)

    decision = (
        '{"operations": [{"op": "update", "id": "m1", "text": "Acme Corp moved from Kubernetes to Nomad", '
        '"kind": "fact", "ttl_days": null, "reason": "the user said they moved"}]}'
    )
    emulator.fault(method="POST", path="/v1/chat/completions", status=200, body=_completion(decision))
    mode.say(client, user, "We moved from Kubernetes to Nomad last month.", False)
    with Memory(proxy.url, api_key=key) as memory:
        deadline = time.monotonic() + 15
        while memory.user(user).get(original["id"])["text"] == original["text"] and time.monotonic() < deadline:
            time.sleep(0.05)
        updated = memory.user(user).get(original["id"])
    assert updated["text"] == "Acme Corp moved from Kubernetes to Nomad"
    assert [entry["text"] for entry in updated["history"]] == [original["text"]]

    mode.say(client, user, "Are we still on Kubernetes?", False)
    assert "moved from Kubernetes to Nomad" in mode.seen(emulator)


def _completion(content: str) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
