"""POST /v1/responses: remembered facts appended to ``instructions``; the answer captured.

Instructions are not carried over by ``previous_response_id``, so the block goes on every call.
A conversation with no named user is its own subject: memory that outlives its truncation.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request

from proxy.hooks.capture import TurnTap, event_json, latest_user_texts, message_text
from proxy.hooks.recall import Memory, Plan, append_text, encode, hooked, identify, recall
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


@hooked
async def create_response(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    if body is None:
        return Plan()
    conversation = conversation_id(body)
    fallback = f"conversation:{conversation}" if conversation else None
    memory = identify(request, runtime, subject_for(request.headers, runtime.settings, body, fallback))
    if not memory.active:
        return Plan(memory=memory)
    user = user_texts(body)
    memory = await recall(runtime, memory, "\n".join(user))
    if memory.block:
        body["instructions"] = append_text(body.get("instructions"), memory.block)
    tap = TurnTap(runtime, memory, stream=bool(body.get("stream")), build=partial(build_turn, memory, body, user))
    return Plan(encode(body) if memory.block else None, memory, tap)
