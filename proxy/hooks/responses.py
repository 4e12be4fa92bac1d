"""POST /v1/responses: remembered facts appended to ``instructions``; the answer captured.

Instructions are not carried over by ``previous_response_id``, so the block goes on every call.
A conversation with no named user is its own subject: memory that outlives its truncation.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.hooks.capture import TurnTap, event_json, latest_user_texts, message_text
from proxy.hooks.recall import Memory, append_text, encode, identify, read_json, recall
from proxy.identity import subject_for
from proxy.runtime import Runtime
from proxy.sse import Event
from proxy.turns import Turn


def conversation_id(body: dict[str, Any]) -> str | None:
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    return conversation if isinstance(conversation, str) and conversation else None


def user_texts(body: dict[str, Any]) -> list[str]:
    given = body.get("input")
    if isinstance(given, str):
        return [given] if given.strip() else []
    return latest_user_texts(given) if isinstance(given, list) else []


def output_text(response: dict[str, Any]) -> str:
    messages = [item for item in response.get("output") or [] if isinstance(item, dict) and item.get("type") == "message"]
    return "\n".join(message_text(item.get("content")) for item in messages).strip()


def completed_response(data: Any) -> dict[str, Any] | None:
    """The finished response object, from a JSON body or from a stream's ``response.completed``."""
    if isinstance(data, dict):
        return data if data.get("status") == "completed" else None
    for event in reversed(data):
        if isinstance(event, Event) and event.event == "response.completed":
            payload = event_json(event)
            return payload.get("response") if isinstance(payload, dict) else None
    return None


def build_turn(memory: Memory, body: dict[str, Any], user: list[str], data: Any) -> Turn | None:
    response = completed_response(data)
    if response is None or not response.get("id"):
        return None
    source = {"response_id": response["id"], "conversation_id": conversation_id(body)}
    return Turn(
        memory.tenant, memory.subject, "responses", response["id"], user,
        [output_text(response)], source, body.get("model"),
    )


async def create_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    raw, body = await read_json(request)
    if body is None:
        return await runtime.forwarder.forward(request, raw, headers=Memory("off").headers())
    conversation = conversation_id(body)
    fallback = f"conversation:{conversation}" if conversation else None
    memory = identify(request, runtime, subject_for(request.headers, runtime.settings, body, fallback))
    if not memory.active:
        return await runtime.forwarder.forward(request, raw, headers=memory.headers())
    user = user_texts(body)
    memory = await recall(runtime, memory, "\n".join(user))
    if memory.block:
        body["instructions"] = append_text(body.get("instructions"), memory.block)
        raw = encode(body)
    tap = TurnTap(runtime, memory, stream=bool(body.get("stream")), build=partial(build_turn, memory, body, user))
    return await runtime.forwarder.forward(request, raw, tap=tap, headers=memory.headers())
