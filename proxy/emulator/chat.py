"""``/v1/chat/completions``: Chat Completions over the deterministic model, JSON or SSE.

``n`` is accepted and ignored: there is always exactly one choice (the model is deterministic, so
more choices would be identical). ``user``, ``safety_identifier``, ``metadata``, ``store`` and
sampling parameters are accepted (metadata is validated) and have no effect on the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.assistants.validation import check_metadata, invalid, require
from proxy.emulator import model
from proxy.emulator.common import now, parse_json_body, require_value
from proxy.emulator.ids import new_id
from proxy.emulator.items import text_of
from proxy.emulator.prompting import output_format, tool_choice
from proxy.emulator.sse import DONE, encode_event, sse_response
from proxy.errors import OpenAIError

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def messages_to_turns(messages: Any) -> list[model.Turn]:
    """Validate ``messages`` and read them as model turns (assistant tool calls become ``tool_call`` turns)."""
    if not isinstance(messages, list):
        raise invalid("messages", "expected an array of messages.", "invalid_type")
    if not messages:
        raise invalid(
            "messages",
            "empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "empty_array",
        )
    turns: list[model.Turn] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            allowed = ", ".join(map(repr, ROLES))
            raise invalid(f"messages[{index}].role", f"expected one of {allowed}, but got {role!r}.")
        turns += _message_turns(message, index, turns)
    return turns


def _message_turns(message: dict[str, Any], index: int, earlier: list[model.Turn]) -> list[model.Turn]:
    role, text = message["role"], text_of(message.get("content"))
    if role == "assistant":
        functions = [(call.get("function") or {}, call.get("id")) for call in message.get("tool_calls") or []]
        calls = [model.Turn("tool_call", fn.get("arguments", ""), fn.get("name"), call_id) for fn, call_id in functions]
        return ([model.Turn("assistant", text)] if text else []) + calls
    if role in ("user", "system", "developer"):
        require_value(message.get("content"), f"messages[{index}].content")
        return [model.Turn(role, text)]
    if role == "function":
        return [model.Turn("tool", text, name=message.get("name"))]
    call_id = message.get("tool_call_id")
    require_value(call_id, f"messages[{index}].tool_call_id")
    if not any(turn.role == "tool_call" and turn.call_id == call_id for turn in earlier):
        raise OpenAIError(
            400,
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
            "with 'tool_calls'.",
            param=f"messages.[{index}].role",
        )
    return [model.Turn("tool", text, call_id=call_id)]


def _tools(tools: Any) -> list[model.Tool]:
    out = []
    for index, tool in enumerate(tools or []):
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function")
            require_value(function, f"tools[{index}].function")
            if not isinstance(function, dict):
                raise invalid(f"tools[{index}].function", "expected an object.", "invalid_type")
            require_value(function.get("name"), f"tools[{index}].function.name")
            out.append(model.Tool(function["name"], function.get("parameters")))
    return out


def build_prompt(body: dict[str, Any]) -> model.Prompt:
    """Validate a chat request and turn it into the model's :class:`Prompt`."""
    require(body, "model", "messages")
    check_metadata(body.get("metadata"))
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid("stream_options", "the 'stream_options' parameter is only allowed when 'stream' is enabled.")
    mode, forced = tool_choice(body.get("tool_choice"))
    return model.Prompt(
        turns=messages_to_turns(body["messages"]),
        tools=_tools(body.get("tools")),
        tool_choice=mode,
        forced_tool=forced,
        parallel_tool_calls=body.get("parallel_tool_calls", True) is not False,
        output_format=output_format(body.get("response_format"), "response_format"),
    )


def usage(prompt: model.Prompt, completion: model.Completion) -> dict[str, Any]:
    """The chat ``usage`` block, counted with the model's token rule."""
    tokens_in, tokens_out = model.prompt_tokens(prompt), model.completion_tokens(completion)
    return {
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_calls(completion: model.Completion) -> list[dict[str, Any]]:
    return [
        {"id": new_id("call"), "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in completion.calls
    ]


def completion_object(body: dict[str, Any], prompt: model.Prompt, completion: model.Completion) -> dict[str, Any]:
    """The ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text, "refusal": None, "annotations": []}
    if completion.calls:
        message["tool_calls"] = _tool_calls(completion)
    finish = "tool_calls" if completion.calls else "stop"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {**_header(body, "chat.completion"), "choices": [choice], "usage": usage(prompt, completion)}


def _header(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "id": new_id("chat"),
        "object": kind,
        "created": now(),
        "model": body["model"],
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }


def stream_chunks(body: dict[str, Any], prompt: model.Prompt, completion: model.Completion) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, in order.

    Role first, then one content delta per word (or, for calls, each call's id and name, then its
    arguments in pieces), then an empty delta with ``finish_reason``; with
    ``stream_options.include_usage`` every chunk has ``usage: null`` and a last chunk with no
    choices carries the usage.
    """
    header = _header(body, "chat.completion.chunk")
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**header, "choices": [choice], **({"usage": None} if with_usage else {})}

    yield chunk({"role": "assistant", "content": "" if completion.text is not None else None, "refusal": None})
    for piece in model.chunk_text(completion.text or ""):
        yield chunk({"content": piece})
    for index, call in enumerate(_tool_calls(completion)):
        function = call["function"]
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            }
        )
        for piece in model.chunk_text(function["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls" if completion.calls else "stop")
    if with_usage:
        yield {**header, "choices": [], "usage": usage(prompt, completion)}


async def create(request: Request) -> Response:
    """``POST /chat/completions``."""
    body = parse_json_body(await request.body())
    prompt = build_prompt(body)
    completion = model.respond(prompt)
    if body.get("stream"):
        events = (encode_event(chunk) for chunk in stream_chunks(body, prompt, completion))
        return sse_response([*events, DONE])
    return JSONResponse(completion_object(body, prompt, completion))


ROUTES = [Route("/v1/chat/completions", create, methods=["POST"])]
