"""Chat Completions on the emulator, through the real openai SDK, checked against the OpenAPI spec."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pydantic
import pytest
from spec import validate

MODEL = "gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


def _raw_chunks(emulator, body: dict) -> list[dict]:
    """The stream's JSON chunks as sent (no SDK), asserting it ends with ``data: [DONE]``."""
    with httpx.stream("POST", emulator.base_url + "/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def _create(client: openai.OpenAI, **params):
    """Create a completion; validate the JSON as sent against the spec; return the SDK object."""
    raw = client.chat.completions.with_raw_response.create(**params)
    validate(json.loads(raw.text), "CreateChatCompletionResponse")
    return raw.parse()


def test_plain_answer(emulator_openai) -> None:
    completion = _create(
        emulator_openai,
        model=MODEL,
        messages=[{"role": "system", "content": "Memory: likes tea."}, {"role": "user", "content": "Hi there"}],
        user="u-1",
        safety_identifier="s-1",
        metadata={"k": "v"},
        n=3,
    )
    assert completion.id.startswith("chatcmpl-")
    assert len(completion.choices) == 1
    assert completion.choices[0].message.content == 'You said: "Hi there". Instructions: "Memory: likes tea.".'
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.total_tokens) == (7, 7 + usage.completion_tokens)


def test_content_parts_are_read(emulator_openai) -> None:
    completion = emulator_openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "part one"}]}]
    )
    assert completion.choices[0].message.content == 'You said: "part one".'


def test_stream_sends_role_words_finish_usage_done(emulator) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = _raw_chunks(emulator, body)
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(words) == 'You said: "one two three".'
    assert len(words) == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_stream_without_usage_option_has_no_usage_chunk(emulator) -> None:
    chunks = _raw_chunks(emulator, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True})
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


def test_sdk_stream_helper_accumulates(emulator_openai) -> None:
    with emulator_openai.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == 'You said: "stream me".'


async def test_async_client_streams(emulator) -> None:
    async with openai.AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "async hello"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == 'You said: "async hello".'


class Facts(pydantic.BaseModel):
    facts: list[str]
    mood: str


def test_json_schema_with_sdk_parse(emulator_openai) -> None:
    completion = emulator_openai.chat.completions.parse(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Extract facts about the user."},
            {"role": "user", "content": "I live in Oslo. Nice weather. My sister is Ann."},
        ],
        response_format=Facts,
    )
    parsed = completion.choices[0].message.parsed
    assert parsed.facts == ["I live in Oslo.", "My sister is Ann."]
    assert parsed.mood == "I live in Oslo. My sister is Ann."


def test_json_schema_validates_against_the_given_schema(emulator_openai) -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 1},
            "label": {"type": "string", "enum": ["a", "b"]},
        },
        "required": ["items", "label"],
        "additionalProperties": False,
    }
    completion = emulator_openai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "anything"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)


def test_json_object(emulator_openai) -> None:
    completion = emulator_openai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "We have two kids."}],
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content)["facts"] == ["We have two kids."]


def test_tool_call_round_trip(emulator_openai) -> None:
    messages = [{"role": "user", "content": "Please call get_weather for Bergen."}]
    first = _create(emulator_openai, model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    assert arguments["city"] == "Bergen"

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "rain, 9C"})
    final = _create(emulator_openai, model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert 'Tool get_weather returned: "rain, 9C".' in final.choices[0].message.content


def test_tool_call_streamed_as_deltas(emulator, emulator_openai) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "call get_weather for Oslo"}],
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    chunks = _raw_chunks(emulator, body)
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks]
    opening = deltas[1][0]
    assert opening["id"].startswith("call_") and opening["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(d[0]["function"]["arguments"] for d in deltas[2:] if d)
    assert json.loads(arguments) == {"city": "Oslo", "unit": "c"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    helper = emulator_openai.chat.completions.stream(model=MODEL, messages=body["messages"], tools=[WEATHER_TOOL])
    with helper as stream:
        final = stream.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo", "unit": "c"}


def test_tool_choice_forces_a_call(emulator_openai) -> None:
    completion = emulator_openai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            {"model": MODEL, "messages": [{"role": "tool", "tool_call_id": "call_x", "content": "x"}]},
            "messages.[0].role",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "metadata": {"k": 1}}, "metadata"),
    ],
)
def test_invalid_requests_are_400_with_param(emulator_openai, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param
    assert info.value.body["type"] == "invalid_request_error"
