"""POST /v1/responses: remembered facts appended to ``instructions``; the answer captured.

Instructions are not carried over by ``previous_response_id``, so the block goes on every call.
Whose memories: the rule of :mod:`proxy.hooks.subjects`; a conversation whose metadata names no user
is its own subject: memory that outlives its truncation.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from starlette.requests import Request

from proxy.hooks.capture import TurnTap, event_json, park, queue, started_of, unpark
from proxy.hooks.recall import Identified, Plan, append_text, encode, hooked, identify, recall, tenant_of
from proxy.hooks.subjects import named_user
from proxy.identity import subject_for
from proxy.ids import is_id, upstream_path
from proxy.learn.turn import Turn, latest_user_texts, message_text, previous_user_texts
from proxy.owner import Owner
from proxy.ownership import record_conversation
from proxy.runtime import Runtime
from proxy.sse import Event

PENDING = "pending_response"
PARK_WAITS = (0.05, 0.2, 0.5)
"""Seconds to look again for a completed response's parked turn: a poll can outrun the park.

The create call's tap parks a background response after the client already has its id (taps run
once the answer is sent), so a client that polls at once, against an upstream as fast as a replay
of recorded traffic, can see the response completed before its turn is parked.
"""


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
    messages = [
        item for item in response.get("output") or [] if isinstance(item, dict) and item.get("type") == "message"
    ]
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


def build_turn(owner: Owner, started_at: float, body: dict[str, Any], user: list[str], data: Any) -> Turn | None:
    response = completed_response(data)
    if response is None or not response.get("id"):
        return None
    return response_turn(owner, started_at, response, user, conversation_id(body))


def response_turn(
    owner: Owner, started_at: float, response: dict[str, Any], user: list[str], conversation: str | None
) -> Turn:
    source = {"response_id": response["id"], "conversation_id": conversation}
    answer = [output_text(response)]
    model = response.get("model")
    return Turn(owner, "responses", response["id"], user, answer, source, model, started_at=started_at)


class ResponseTap(TurnTap):
    """A background response answers ``queued``: park the turn until a GET sees it completed."""

    def __init__(self, runtime: Runtime, memory: Identified, body: dict[str, Any], user: list[str]) -> None:
        build = partial(build_turn, memory.owner, memory.at, body, user)
        super().__init__(runtime, stream=bool(body.get("stream")), build=build)
        self.memory, self.user, self.conversation = memory, user, conversation_id(body)

    async def capture(self, status: int, complete: bool) -> None:
        data = self.body() if status == 200 and complete else None
        if isinstance(data, dict) and data.get("status") in ("queued", "in_progress") and data.get("id"):
            owner, started_at = self.memory.owner, self.memory.at
            await park(
                self.runtime, PENDING, owner, data["id"], started_at, user=self.user, conversation_id=self.conversation
            )
            return
        await super().capture(status, complete)


class PolledResponseTap(TurnTap):
    """GET /v1/responses/{id}: the first poll that sees a parked response completed queues its turn."""

    def __init__(self, runtime: Runtime, tenant: str) -> None:
        super().__init__(runtime, stream=False, build=lambda data: None)
        self.tenant = tenant

    async def capture(self, status: int, complete: bool) -> None:
        response = self.body() if status == 200 and complete else None
        if not isinstance(response, dict) or response.get("status") != "completed":
            return
        waiting = await unpark(self.runtime, PENDING, self.tenant, response["id"])
        for pause in PARK_WAITS:  # after the client has its answer: waiting here delays nobody
            if waiting is not None:
                break
            await asyncio.sleep(pause)
            waiting = await unpark(self.runtime, PENDING, self.tenant, response["id"])
        if waiting is not None:
            owner, record = waiting
            user, conversation = record.get("user") or [], record.get("conversation_id")
            turn = response_turn(owner, started_of(record), response, user, conversation)
            await queue(self.runtime, turn)


async def response_subject(request: Request, runtime: Runtime, body: dict[str, Any]) -> str | None:
    """Header, the body (metadata, ``safety_identifier``, ``user``), the conversation's metadata, the conversation.

    The same order as a run's (:func:`proxy.hooks.assistants.thread_subject`): a conversation is a thread.
    """
    direct = subject_for(request.headers, runtime.settings, body)
    conversation = conversation_id(body)
    if direct or not conversation:
        return direct
    if not is_id(conversation):  # never looked up: the upstream refuses it anyway
        return f"conversation:{conversation}"
    path = upstream_path("/conversations/{c}", c=conversation)
    named = await named_user(request, runtime, "conversation_subject", conversation, path)
    return named or f"conversation:{conversation}"


@hooked
async def create_response(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    if body is None:
        return Plan()
    memory = identify(request, runtime, await response_subject(request, runtime, body))
    if not isinstance(memory, Identified):
        return Plan(memory=memory)
    conversation = conversation_id(body)
    if conversation:  # the owner's conversation (its own subject, or a named user's): erasure deletes it
        await record_conversation(runtime.state, memory.owner, conversation, runtime.route)
    user = user_texts(body)
    given = body.get("input")
    previous = previous_user_texts(given) if isinstance(given, list) else []
    memory = await recall(runtime, memory, "\n".join(user), previous="\n".join(previous))
    if memory.block:
        body["instructions"] = append_text(body.get("instructions"), memory.block)
    return Plan(encode(body) if memory.block else None, memory, ResponseTap(runtime, memory, body, user))


@hooked
async def retrieve_response(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    tenant = tenant_of(request, runtime)
    return Plan(tap=PolledResponseTap(runtime, tenant)) if tenant else Plan()
