"""The real SDK gets the same results, call by call, with or without the proxy in between.

Each scenario runs twice against a freshly reset emulator: once directly, once through the proxy.
Both the SDK's results and the requests the emulator received must be the same, apart from
generated ids and timestamps. Memory is switched off per request (``X-Memory: off``): this suite
is about forwarding; the proxy must keep that control header to itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

ID = re.compile(r"^(chatcmpl|resp|msg|conv|file|call|fc|rs|req|item|cmpl|ws)[-_][A-Za-z0-9_-]+$")
VOLATILE_KEYS = {"created", "created_at", "completed_at", "expires_at"}
# Headers that legitimately differ between two runs or two routes to the same upstream.
VOLATILE_HEADERS = {"host", "x-stainless-retry-count", "x-stainless-read-timeout", "x-stainless-timeout", "x-memory"}


def normalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (0 if k in VOLATILE_KEYS and isinstance(v, (int, float)) else normalize(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalize(item) for item in value]
    if isinstance(value, str) and ID.match(value):
        return ID.match(value).group(1) + "_<id>"
    return value


def dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [dump(item) for item in value]
    return value


def chat_plain(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )


def chat_stream(client: openai.OpenAI) -> Any:
    return list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Tell me about streams"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )


def chat_tools(client: openai.OpenAI) -> Any:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Please call get_weather for Paris"}], tools=[tool]
    )


def chat_json_schema(client: openai.OpenAI) -> Any:
    schema = {
        "type": "object",
        "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
        "required": ["facts"],
        "additionalProperties": False,
    }
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "I live in Lyon. My dog is called Rex."}],
        response_format={"type": "json_schema", "json_schema": {"name": "facts", "schema": schema, "strict": True}},
    )


def responses_plain(client: openai.OpenAI) -> Any:
    first = client.responses.create(model="gpt-4o-mini", instructions="Answer in French.", input="Hello there")
    second = client.responses.create(model="gpt-4o-mini", input="And again", previous_response_id=first.id)
    return [first, second]


def responses_stream(client: openai.OpenAI) -> Any:
    return list(client.responses.create(model="gpt-4o-mini", input="Stream this please", stream=True))


def responses_background(client: openai.OpenAI) -> Any:
    response = client.responses.create(model="gpt-4o-mini", input="Work in the background", background=True)
    statuses = [response.status]
    while response.status in ("queued", "in_progress"):
        time.sleep(0.02)
        response = client.responses.retrieve(response.id)
        statuses.append(response.status)
    return {"final": dump(response), "ended": statuses[-1], "started": statuses[0]}


def conversations(client: openai.OpenAI) -> Any:
    conversation = client.conversations.create(metadata={"user_id": "u1"})
    client.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "first"}] * 3
    )
    client.responses.create(model="gpt-4o-mini", input="What did I say?", conversation=conversation.id)
    page = client.conversations.items.list(conversation.id, limit=2, order="asc")
    items = list(client.conversations.items.list(conversation.id, limit=2))
    updated = client.conversations.update(conversation.id, metadata={"user_id": "u2"})
    deleted = client.conversations.delete(conversation.id)
    return [conversation, page.data, page.has_more, items, updated, deleted]


def embeddings(client: openai.OpenAI) -> Any:
    default = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="gamma", encoding_format="float", dimensions=8
    )
    return [default, floats]


def files(client: openai.OpenAI) -> Any:
    uploaded = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="batch")
    listed = client.files.list()
    content = client.files.content(uploaded.id).read().decode()
    deleted = client.files.delete(uploaded.id)
    return [uploaded, listed.data, content, deleted]


def models(client: openai.OpenAI) -> Any:
    return [list(client.models.list()), client.models.retrieve("gpt-4o-mini")]


def errors(client: openai.OpenAI) -> Any:
    outcomes = []
    for call in (
        lambda: client.responses.retrieve("resp_missing"),
        lambda: client.models.retrieve("no-such-model"),
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[]),
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        outcomes.append({"status": caught.value.status_code, "body": caught.value.body})
    return outcomes


SCENARIOS: list[Callable[[openai.OpenAI], Any]] = [
    chat_plain,
    chat_stream,
    chat_tools,
    chat_json_schema,
    responses_plain,
    responses_stream,
    responses_background,
    conversations,
    embeddings,
    files,
    models,
    errors,
]


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy()


def received(emulator) -> list[dict[str, Any]]:
    """What the upstream saw, ids masked; repeated polls collapse, their number depends on timing."""
    entries = [
        {
            "method": entry["method"],
            "path": "/".join(normalize(segment) for segment in entry["path"].split("/")),
            "query": re.sub(r"=(\w+_[A-Za-z0-9]+)", lambda m: "=" + normalize(m.group(1)), entry["query"]),
            "body": normalize(entry["body"])
            if not isinstance(entry["body"], str)
            else re.sub(r"boundary=?[-\w]+|-{2,}[-\w]+", "<boundary>", entry["body"]),
            "headers": {k: v for k, v in entry["headers"].items() if k not in VOLATILE_HEADERS and "boundary" not in v},
        }
        for entry in emulator.requests()
    ]
    return [entry for index, entry in enumerate(entries) if index == 0 or entry != entries[index - 1]]


MEMORY_OFF = {"x-memory": "off"}


def run(scenario: Callable[[openai.OpenAI], Any], base_url: str, emulator) -> tuple[Any, Any]:
    emulator.reset()
    with openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, default_headers=MEMORY_OFF) as client:
        result = normalize(dump(scenario(client)))
    return result, received(emulator)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_sdk_sees_no_difference_through_the_proxy(scenario, emulator, proxy) -> None:
    direct, direct_requests = run(scenario, emulator.base_url, emulator)
    proxied, proxied_requests = run(scenario, proxy.url + "/v1", emulator)
    assert all("x-memory" not in entry["headers"] for entry in emulator.requests())
    assert proxied == direct
    assert proxied_requests == direct_requests
