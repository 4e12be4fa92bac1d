"""The Responses engine: a create-response request in, a ``response`` object or its events out.

No HTTP here (errors are :class:`OpenAIError`), so the HTTP layer (``responses.py``) stays thin and the
emulated Assistants engine can drive responses in-process. One request goes through
:meth:`ResponsesEngine.prepare` (validation, context from ``previous_response_id`` or
``conversation``, the model's answer), then is finished synchronously, streamed as events, or run
in the background (``queued`` -> ``in_progress`` -> ``completed``, ``background_delay`` apart).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from proxy.assistants.validation import check_metadata, invalid, not_found, require
from proxy.emulator import model
from proxy.emulator.common import now, require_value
from proxy.emulator.ids import new_id
from proxy.emulator.items import item_text, items_to_turns, message_item, normalize_input, output_text_part
from proxy.emulator.prompting import output_format, tool_choice
from proxy.emulator.state import Conversation, EmulatorState, StoredResponse
from proxy.errors import OpenAIError

TERMINAL = ("completed", "failed", "cancelled", "incomplete")


@dataclass
class Run:
    """A validated request with its context and the model's answer, not yet turned into a response."""

    body: dict[str, Any]
    response_id: str
    created_at: int
    context: list[dict[str, Any]]
    input_items: list[dict[str, Any]]
    conversation: Conversation | None
    prompt: model.Prompt
    completion: model.Completion

    @property
    def store(self) -> bool:
        return self.body.get("store") is not False

    @property
    def background(self) -> bool:
        return bool(self.body.get("background"))


class ResponsesEngine:
    """Creates, stores, streams, retrieves, cancels and deletes responses over an :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # --- creating ------------------------------------------------------------------------------

    def prepare(self, body: dict[str, Any]) -> Run:
        """Validate ``body``, gather the context and let the model answer."""
        require(body, "model")
        check_metadata(body.get("metadata"))
        if body.get("previous_response_id") and body.get("conversation"):
            raise OpenAIError(
                400,
                "Mutually exclusive parameters: Ensure you are only providing one of: "
                "'previous_response_id' or 'conversation'.",
                param="previous_response_id",
                code="mutually_exclusive_parameters",
            )
        if body.get("background") and body.get("store") is False:
            raise invalid("background", "background mode requires store=true.")
        input_items = normalize_input(body["input"]) if body.get("input") is not None else []
        conversation = self._conversation(body.get("conversation"))
        context = list(conversation.items) if conversation else self._previous_history(body.get("previous_response_id"))
        _check_call_outputs(context, input_items)
        prompt = build_prompt(body, context + input_items)
        return Run(body, new_id("response"), now(), context, input_items, conversation, prompt, model.respond(prompt))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a response: finished at once, or ``queued`` when ``background`` is set."""
        run = self.prepare(body)
        if run.background:
            return self.start_background(run)
        return self.finish(run)

    def finish(self, run: Run, response: dict[str, Any] | None = None) -> dict[str, Any]:
        """Complete ``run``: fill in output and usage, store it, append to its conversation."""
        response = response if response is not None else self.skeleton(run, "in_progress")
        response.update(
            status="completed",
            completed_at=now(),
            output=output_items(run.completion),
            usage=usage(run.prompt, run.completion),
        )
        if run.conversation is not None:
            run.conversation.items.extend([*run.input_items, *response["output"]])
        if run.store:
            history = [*run.context, *run.input_items, *response["output"]]
            stored = self.state.responses.get(run.response_id)
            if stored is None:
                self.state.responses[run.response_id] = StoredResponse(response, run.input_items, history)
            else:
                stored.history = history
        return response

    def start_background(self, run: Run) -> dict[str, Any]:
        """Store a ``queued`` response and let it progress on the event loop."""
        response = self.skeleton(run, "queued")
        stored = StoredResponse(response, run.input_items, [])
        self.state.responses[run.response_id] = stored
        stored.task = asyncio.get_running_loop().create_task(self._progress(run, stored))
        return dict(response)

    async def _progress(self, run: Run, stored: StoredResponse) -> None:
        await asyncio.sleep(self.state.background_delay)
        stored.response["status"] = "in_progress"
        await asyncio.sleep(self.state.background_delay)
        self.finish(run, stored.response)

    def events(self, run: Run) -> list[dict[str, Any]]:
        """Finish ``run`` and return its stream events, numbered from 0 (see :func:`stream_events`)."""
        snapshot = self.skeleton(run, "queued" if run.background else "in_progress")
        return stream_events(snapshot, self.finish(run, dict(snapshot)))

    def skeleton(self, run: Run, status: str) -> dict[str, Any]:
        """The response object with everything but output and usage, echoing the request.

        ``user`` (when not given) and ``usage`` (until completed) are left out rather than null:
        the spec allows null for neither.
        """
        body = run.body
        text = body.get("text") or {}
        tier = body.get("service_tier")
        return {
            "id": run.response_id,
            "object": "response",
            "created_at": run.created_at,
            "status": status,
            "background": run.background,
            "completed_at": None,
            "conversation": {"id": run.conversation.id} if run.conversation else None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "metadata": body.get("metadata") or {},
            "model": body["model"],
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default" if tier in (None, "auto") else tier,
            "store": run.store,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity", "medium")},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": [_echo_tool(tool) for tool in body.get("tools") or []],
            "top_logprobs": body.get("top_logprobs", 0),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            **({"user": body["user"]} if body.get("user") is not None else {}),  # not nullable in the spec
        }

    def _conversation(self, value: Any) -> Conversation | None:
        if value is None:
            return None
        conversation_id = value.get("id") if isinstance(value, dict) else value
        if not isinstance(conversation_id, str):
            raise invalid("conversation", "expected a conversation id or an object with an 'id'.", "invalid_type")
        return self.state.conversations.get(conversation_id)

    def _previous_history(self, previous_id: str | None) -> list[dict[str, Any]]:
        if not previous_id:
            return []
        stored = self.state.responses.get(previous_id)
        if stored is None:
            raise OpenAIError(
                400,
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return list(stored.history)

    # --- reading -------------------------------------------------------------------------------

    def stored(self, response_id: str) -> StoredResponse:
        try:
            return self.state.responses[response_id]
        except KeyError:
            raise not_found("response", response_id, param="response_id") from None

    def cancel(self, response_id: str) -> dict[str, Any]:
        """Cancel a background response still queued or in progress; a finished one is returned as is."""
        stored = self.stored(response_id)
        if not stored.response["background"]:
            raise OpenAIError(400, "Only responses created with background=true can be cancelled.", param="response_id")
        if stored.response["status"] not in TERMINAL:
            if stored.task is not None:
                stored.task.cancel()
            stored.response["status"] = "cancelled"
        return stored.response

    def delete(self, response_id: str) -> dict[str, Any]:
        stored = self.stored(response_id)
        if stored.task is not None:
            stored.task.cancel()
        del self.state.responses[response_id]
        return {"id": response_id, "object": "response.deleted", "deleted": True}


def build_prompt(body: dict[str, Any], items: list[dict[str, Any]]) -> model.Prompt:
    """The model's view of a create-response request over ``items`` (context + input)."""
    instructions = body.get("instructions")
    if isinstance(instructions, list):
        instructions = "\n\n".join(item_text(item) for item in instructions if isinstance(item, dict))
    tools = [_tool(tool, index) for index, tool in enumerate(body.get("tools") or [])]
    mode, forced = tool_choice(body.get("tool_choice"))
    return model.Prompt(
        turns=items_to_turns(items),
        instructions=instructions or None,
        tools=[tool for tool in tools if tool is not None],
        tool_choice=mode,
        forced_tool=forced,
        parallel_tool_calls=body.get("parallel_tool_calls", True) is not False,
        output_format=output_format((body.get("text") or {}).get("format"), "text.format"),
    )


def _tool(tool: Any, index: int) -> model.Tool | None:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return None
    require_value(tool.get("name"), f"tools[{index}].name")
    return model.Tool(tool["name"], tool.get("parameters"))


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool as responses echo it: ``strict`` and ``parameters`` always present."""
    if tool.get("type") != "function":
        return tool
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict", True),
    }


def _check_call_outputs(context: list[dict[str, Any]], input_items: list[dict[str, Any]]) -> None:
    """A function_call_output must answer a function_call in the context or the input, as OpenAI checks."""
    calls = {item.get("call_id") for item in [*context, *input_items] if item.get("type") == "function_call"}
    for item in input_items:
        if item.get("type") == "function_call_output" and item.get("call_id") not in calls:
            raise invalid("input", f"No tool call found for function call output with call_id {item.get('call_id')}.")


def output_items(completion: model.Completion) -> list[dict[str, Any]]:
    """The response's ``output``: one assistant message, or one function_call item per call."""
    if completion.text is not None:
        return [message_item("assistant", completion.text)]
    return [
        {
            "id": new_id("function_call"),
            "type": "function_call",
            "status": "completed",
            "call_id": new_id("call"),
            "name": call.name,
            "arguments": call.arguments,
        }
        for call in completion.calls
    ]


def usage(prompt: model.Prompt, completion: model.Completion) -> dict[str, Any]:
    """The Responses ``usage`` block, counted with the model's token rule."""
    tokens_in, tokens_out = model.prompt_tokens(prompt), model.completion_tokens(completion)
    return {
        "input_tokens": tokens_in,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": tokens_out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens_in + tokens_out,
    }


def stream_events(snapshot: dict[str, Any], final: dict[str, Any]) -> list[dict[str, Any]]:
    """The full event sequence of a streamed response, ``sequence_number`` from 0.

    created (+ queued for background) -> in_progress -> per output item: output_item.added,
    then content_part.added / output_text.delta... / output_text.done / content_part.done for a
    message, or function_call_arguments.delta... / .done for a call, then output_item.done ->
    completed.
    """
    numbers = itertools.count()

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(numbers), **fields}

    start = {**snapshot, "output": [], "completed_at": None}
    events = [event("response.created", response=start)]
    if start["status"] == "queued":
        events.append(event("response.queued", response=start))
    events.append(event("response.in_progress", response={**start, "status": "in_progress"}))
    for index, item in enumerate(final["output"]):
        events += [event(kind, **fields) for kind, fields in _item_events(index, item)]
    events.append(event("response.completed", response=final))
    return events


def _item_events(index: int, item: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    ref = {"item_id": item["id"], "output_index": index}
    if item["type"] == "function_call":
        opening = {**item, "status": "in_progress", "arguments": ""}
        yield "response.output_item.added", {"output_index": index, "item": opening}
        for delta in model.chunk_text(item["arguments"]):
            yield "response.function_call_arguments.delta", {**ref, "delta": delta}
        yield "response.function_call_arguments.done", {**ref, "name": item["name"], "arguments": item["arguments"]}
    else:
        text = item["content"][0]["text"]
        part = {**ref, "content_index": 0}
        opening = {**item, "status": "in_progress", "content": []}
        yield "response.output_item.added", {"output_index": index, "item": opening}
        yield "response.content_part.added", {**part, "part": output_text_part("")}
        for delta in model.chunk_text(text):
            yield "response.output_text.delta", {**part, "delta": delta, "logprobs": []}
        yield "response.output_text.done", {**part, "text": text, "logprobs": []}
        yield "response.content_part.done", {**part, "part": output_text_part(text)}
    yield "response.output_item.done", {"output_index": index, "item": item}
