"""The emulator's deterministic model and schema filler, without HTTP."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from proxy.emulator.jsonfill import build_instance
from proxy.emulator.model import (
    Completion,
    OutputFormat,
    Prompt,
    Tool,
    Turn,
    chunk_text,
    count_tokens,
    first_person_statements,
    respond,
)

WEATHER = Tool(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
CLOCK = Tool("get_time", {"type": "object", "properties": {}, "additionalProperties": False})


def test_reply_restates_last_user_message_and_all_instructions() -> None:
    prompt = Prompt(
        turns=[Turn("system", "Be terse."), Turn("user", "first"), Turn("assistant", "ok"), Turn("user", "second")],
        instructions="Answer in English.",
    )
    assert respond(prompt) == Completion('You said: "second". Instructions: "Answer in English.\n\nBe terse.".')


def test_reply_without_user_or_instructions() -> None:
    assert respond(Prompt(turns=[])).text == "You said nothing."


def test_same_prompt_same_answer() -> None:
    prompt = Prompt(turns=[Turn("user", "I like tea. call get_weather for Oslo")], tools=[WEATHER])
    assert respond(prompt) == respond(prompt)


def test_call_mentioned_tool_with_arguments_from_the_request() -> None:
    request = "Please call get_weather for Paris and call get_time."
    prompt = Prompt(turns=[Turn("user", request)], tools=[WEATHER, CLOCK])
    calls = respond(prompt).calls
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "celsius"}
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER.parameters)
    assert json.loads(calls[1].arguments) == {}


def test_tool_choice_rules() -> None:
    base = Prompt(turns=[Turn("user", "call get_weather for Rome then call get_time")], tools=[WEATHER, CLOCK])
    assert respond(dataclasses.replace(base, tool_choice="none")).calls == ()
    assert [c.name for c in respond(dataclasses.replace(base, parallel_tool_calls=False)).calls] == ["get_weather"]
    forced = dataclasses.replace(base, tool_choice="required", forced_tool="get_time")
    assert [c.name for c in respond(forced).calls] == ["get_time"]
    unmentioned = Prompt(turns=[Turn("user", "hello")], tools=[CLOCK, WEATHER], tool_choice="required")
    assert [c.name for c in respond(unmentioned).calls] == ["get_time"]
    assert respond(dataclasses.replace(unmentioned, tool_choice="auto")).calls == ()


def test_unknown_tool_mention_is_plain_text() -> None:
    prompt = Prompt(turns=[Turn("user", "call get_stock for ACME")], tools=[WEATHER])
    assert respond(prompt).calls == ()


def test_tool_results_end_the_loop_and_are_reported() -> None:
    turns = [
        Turn("user", "call get_time"),
        Turn("tool_call", "{}", "get_time", "call_1"),
        Turn("tool", "12:00", call_id="call_1"),
    ]
    answer = respond(Prompt(turns=turns, tools=[CLOCK], tool_choice="required"))
    assert answer.calls == ()
    assert answer.text == 'You said: "call get_time". Tool get_time returned: "12:00".'


def test_first_person_statements() -> None:
    text = (
        "user: I live in Oslo. The sky is blue. Do I like tea?\nassistant: I can help.\nOur cat is Tom! my kids love it"
    )
    assert first_person_statements([Turn("user", text), Turn("assistant", "I am a bot.")]) == [
        "I live in Oslo.",
        "Our cat is Tom!",
        "my kids love it",
    ]


def test_json_schema_answer_is_filled_with_statements() -> None:
    schema = {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "kind": {"type": "string", "enum": ["preference", "fact"]},
                    },
                    "required": ["text", "confidence", "kind"],
                    "additionalProperties": False,
                },
            },
            "summary": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/short"}]},
        },
        "required": ["facts", "summary"],
        "additionalProperties": False,
        "$defs": {"short": {"type": "string", "maxLength": 12}},
    }
    prompt = Prompt(
        turns=[Turn("user", "I live in Oslo. It rains. My dog is Rex.")],
        output_format=OutputFormat("json_schema", schema),
    )
    value = json.loads(respond(prompt).text)
    jsonschema.validate(value, schema)
    assert [fact["text"] for fact in value["facts"]] == ["I live in Oslo.", "My dog is Rex."]
    assert value["summary"] == "I live in Os"


def test_json_object_answer() -> None:
    prompt = Prompt(turns=[Turn("user", "We moved to Lyon.")], output_format=OutputFormat("json_object"))
    expected = {"facts": ["We moved to Lyon."], "reply": 'You said: "We moved to Lyon.".'}
    assert json.loads(respond(prompt).text) == expected


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3, "uniqueItems": True},
        {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMaximum": 5}, "ok": {"type": "boolean"}}},
        {"type": ["string", "null"], "format": "date-time"},
        {"allOf": [{"properties": {"a": {"const": 1}}}, {"properties": {"b": {"type": "string", "minLength": 3}}}]},
        {"oneOf": [{"type": "null"}, {"type": "number", "minimum": 2}]},
    ],
)
def test_instances_validate(schema: dict) -> None:
    jsonschema.validate(build_instance(schema, [], "x"), schema)


def test_no_statements_gives_empty_arrays_and_the_message_for_strings() -> None:
    properties = {"facts": {"type": "array", "items": {"type": "string"}}, "note": {"type": "string"}}
    schema = {"type": "object", "properties": properties}
    prompt = Prompt(turns=[Turn("user", "The sky is blue.")], output_format=OutputFormat("json_schema", schema))
    assert json.loads(respond(prompt).text) == {"facts": [], "note": "The sky is blue."}


def test_tokens_and_chunks() -> None:
    assert count_tokens("Hello, world!") == 4
    text = "  one two\nthree  "
    assert "".join(chunk_text(text)) == text
    assert len(chunk_text(text)) == 3
