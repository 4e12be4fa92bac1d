"""The Responses API on the emulator, through the real openai SDK, checked against the OpenAPI spec."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pydantic
import pytest
from spec import stream_event_schemas, validate

from proxy.emulator.testing import serve

MODEL = "gpt-4.1-mini"
TOOL = {
    "type": "function",
    "name": "lookup_order",
    "description": "Find an order.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _create(client: openai.OpenAI, **params):
    """Create a response; validate the JSON as sent against the spec; return the SDK object."""
    raw = client.responses.with_raw_response.create(**params)
    validate(json.loads(raw.text), "Response")
    return raw.parse()


def _events(emulator, body: dict) -> list[tuple[str, dict]]:
    """``(event name, data)`` of a streamed response, as sent."""
    events, name = [], None
    with httpx.stream("POST", emulator.base_url + "/responses", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_plain_response_echoes_request(emulator_openai) -> None:
    response = _create(
        emulator_openai,
        model=MODEL,
        input="Where do I live?",
        instructions="Known about the user: lives in Oslo.",
        metadata={"app": "demo"},
        user="user-7",
        safety_identifier="sid-7",
    )
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == 'You said: "Where do I live?". Instructions: "Known about the user: lives in Oslo.".'
    assert (response.metadata, response.user, response.safety_identifier) == ({"app": "demo"}, "user-7", "sid-7")
    assert response.instructions == "Known about the user: lives in Oslo."
    assert response.usage.input_tokens == 14 and response.usage.total_tokens > response.usage.input_tokens
    assert response.output[0].id.startswith("msg_")


def test_input_as_items(emulator_openai) -> None:
    response = _create(
        emulator_openai,
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "ack"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "new"}]},
        ],
    )
    assert response.output_text == 'You said: "new". Instructions: "Be kind.".'


def test_retrieve_delete_and_unknown_id(emulator_openai) -> None:
    created = _create(emulator_openai, model=MODEL, input="keep me")
    raw = emulator_openai.responses.with_raw_response.retrieve(created.id)
    validate(json.loads(raw.text), "Response")
    assert raw.parse().output_text == created.output_text
    emulator_openai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        emulator_openai.responses.retrieve(created.id)
    assert info.value.body["message"] == f"No response found with id '{created.id}'."


def test_store_false_is_not_retrievable(emulator_openai) -> None:
    created = _create(emulator_openai, model=MODEL, input="forget me", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        emulator_openai.responses.retrieve(created.id)


def test_stream_event_sequence(emulator) -> None:
    events = _events(emulator, {"model": MODEL, "input": "one two"})
    schemas = stream_event_schemas()
    for name, data in events:
        assert name == data["type"]
        validate(data, schemas[data["type"]])
    types = [data["type"] for _, data in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    deltas = "".join(data["delta"] for _, data in events if data["type"] == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert deltas == final["output"][0]["content"][0]["text"] == 'You said: "one two".'
    assert events[0][1]["response"]["status"] == "in_progress" and final["status"] == "completed"
    assert final["usage"]["output_tokens"] > 0


def test_stream_with_sdk_helper_and_stored_result(emulator_openai) -> None:
    with emulator_openai.responses.stream(model=MODEL, input="helper") as stream:
        final = stream.get_final_response()
    assert final.output_text == 'You said: "helper".'
    assert emulator_openai.responses.retrieve(final.id).output_text == final.output_text


def test_previous_response_id_chains_context(emulator_openai) -> None:
    first = _create(emulator_openai, model=MODEL, input="I am Ann.", instructions="first only")
    second = _create(
        emulator_openai,
        model=MODEL,
        input="Who am I?",
        previous_response_id=first.id,
        text={"format": {"type": "json_object"}},
    )
    assert second.previous_response_id == first.id
    body = json.loads(second.output_text)
    assert body["facts"] == ["I am Ann."]
    assert "first only" not in body["reply"]  # instructions are not carried over
    third = _create(emulator_openai, model=MODEL, input="And now?", previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens - 3


def test_unknown_previous_response_is_400(emulator_openai) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert info.value.body["param"] == "previous_response_id"


def test_conversation_context_and_append(emulator_openai) -> None:
    conversation = emulator_openai.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My name is Bo."}]
    )
    first = _create(
        emulator_openai, model=MODEL, input="Hi", conversation=conversation.id, text={"format": {"type": "json_object"}}
    )
    assert first.conversation.id == conversation.id
    assert json.loads(first.output_text)["facts"] == ["My name is Bo."]
    second = _create(emulator_openai, model=MODEL, input="Bye", conversation={"id": conversation.id})
    items = emulator_openai.conversations.items.list(conversation.id, order="asc").data
    texts = [(item.role, item.content[0].text) for item in items]
    assert texts == [
        ("user", "My name is Bo."),
        ("user", "Hi"),
        ("assistant", first.output_text),
        ("user", "Bye"),
        ("assistant", second.output_text),
    ]


def test_conversation_and_previous_response_are_exclusive(emulator_openai) -> None:
    conversation = emulator_openai.conversations.create()
    first = _create(emulator_openai, model=MODEL, input="x")
    with pytest.raises(openai.BadRequestError):
        emulator_openai.responses.create(
            model=MODEL, input="y", conversation=conversation.id, previous_response_id=first.id
        )


def test_function_call_round_trip(emulator_openai) -> None:
    first = _create(emulator_openai, model=MODEL, input="Please call lookup_order for A-17.", tools=[TOOL])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "lookup_order" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"order_id": "A-17"}
    assert first.tools[0].name == "lookup_order"
    final = _create(
        emulator_openai,
        model=MODEL,
        previous_response_id=first.id,
        tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}],
    )
    assert final.output_text == 'You said: "Please call lookup_order for A-17.". Tool lookup_order returned: "shipped".'
    items = json.loads(emulator_openai.responses.input_items.with_raw_response.list(final.id).text)
    validate(items, "ResponseItemList")
    assert [item["type"] for item in items["data"]] == ["function_call_output"]


def test_function_call_output_without_call_is_400(emulator_openai) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.responses.create(
            model=MODEL, input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]
        )
    assert "call_nope" in info.value.body["message"]


def test_function_call_streamed(emulator) -> None:
    events = _events(emulator, {"model": MODEL, "input": "call lookup_order for B-2", "tools": [TOOL]})
    schemas = stream_event_schemas()
    for _, data in events:
        validate(data, schemas[data["type"]])
    types = [data["type"] for _, data in events]
    assert types[2] == "response.output_item.added"
    assert "response.function_call_arguments.done" in types and "response.content_part.added" not in types
    deltas = "".join(d["delta"] for _, d in events if d["type"] == "response.function_call_arguments.delta")
    done = next(d for _, d in events if d["type"] == "response.function_call_arguments.done")
    assert deltas == done["arguments"] and json.loads(deltas) == {"order_id": "B-2"}
    assert done["name"] == "lookup_order"


def test_json_schema_format(emulator_openai) -> None:
    schema = {
        "type": "object",
        "properties": {"memories": {"type": "array", "items": {"type": "string"}}},
        "required": ["memories"],
        "additionalProperties": False,
    }
    response = _create(
        emulator_openai,
        model=MODEL,
        instructions="Extract durable facts.",
        input="I am vegan. Weather is fine. Our flat is small.",
        text={"format": {"type": "json_schema", "name": "facts", "schema": schema, "strict": True}},
    )
    value = json.loads(response.output_text)
    jsonschema.validate(value, schema)
    assert value == {"memories": ["I am vegan.", "Our flat is small."]}
    assert response.text.format.type == "json_schema"


class Profile(pydantic.BaseModel):
    facts: list[str]


def test_sdk_parse_with_text_format(emulator_openai) -> None:
    response = emulator_openai.responses.parse(model=MODEL, input="I run marathons. Cats sleep.", text_format=Profile)
    assert response.output_parsed == Profile(facts=["I run marathons."])


def test_input_items_pagination(emulator_openai) -> None:
    inputs = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    response = _create(emulator_openai, model=MODEL, input=inputs)
    raw = emulator_openai.responses.input_items.with_raw_response.list(response.id, limit=2)
    page = json.loads(raw.text)
    validate(page, "ResponseItemList")
    assert [item["content"][0]["text"] for item in page["data"]] == ["m4", "m3"]  # default order: desc
    assert page["has_more"] is True
    pages = emulator_openai.responses.input_items.list(response.id, order="asc", limit=2)
    every = [item.content[0].text for item in pages]
    assert every == ["m0", "m1", "m2", "m3", "m4"]


def test_background_response_completes(emulator_openai) -> None:
    created = _create(emulator_openai, model=MODEL, input="in the background", background=True)
    assert created.status == "queued" and created.background is True and created.output == []
    seen = {created.status}
    deadline = time.monotonic() + 5
    while True:
        raw = emulator_openai.responses.with_raw_response.retrieve(created.id)
        validate(json.loads(raw.text), "Response")
        response = raw.parse()
        seen.add(response.status)
        if response.status == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert response.status == "completed"
    assert response.output_text == 'You said: "in the background".'
    assert {"queued", "in_progress", "completed"} <= seen


def test_background_cancel() -> None:
    with serve(background_delay=30) as emulator, openai.OpenAI(base_url=emulator.base_url, api_key="k") as client:
        created = client.responses.create(model=MODEL, input="slow", background=True)
        cancelled = client.responses.cancel(created.id)
        assert cancelled.status == "cancelled"
        assert client.responses.retrieve(created.id).status == "cancelled"
        assert client.responses.cancel(created.id).status == "cancelled"


def test_background_stream_starts_queued(emulator, emulator_openai) -> None:
    events = _events(emulator, {"model": MODEL, "input": "bg", "background": True})
    schemas = stream_event_schemas()
    for _, data in events:
        validate(data, schemas[data["type"]])
    assert [data["type"] for _, data in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0][1]["response"]["status"] == "queued"
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["background"] is True
    assert emulator_openai.responses.retrieve(final["id"]).status == "completed"


def test_cancel_of_a_synchronous_response_is_400(emulator_openai) -> None:
    created = _create(emulator_openai, model=MODEL, input="done")
    with pytest.raises(openai.BadRequestError):
        emulator_openai.responses.cancel(created.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": MODEL, "input": 5}, "input"),
        ({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": MODEL, "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
        ),
        ({"model": MODEL, "input": "x", "background": True, "store": False}, "background"),
    ],
)
def test_invalid_requests_are_400_with_param(emulator_openai, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.post("/responses", body=body, cast_to=object)
    assert info.value.body["param"] == param


def test_unknown_conversation_is_404(emulator_openai) -> None:
    with pytest.raises(openai.NotFoundError):
        emulator_openai.responses.create(model=MODEL, input="x", conversation="conv_missing")
