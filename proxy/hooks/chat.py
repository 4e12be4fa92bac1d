"""POST /v1/chat/completions: remembered facts in the system message; the answer captured.

The block is appended to the first system or developer message (the client's text is kept), or
a system message is inserted first. A chat with no named user gets no memory: chat requests
carry no thread to fall back on, and the proxy never guesses a user.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request

from proxy.hooks.capture import TurnTap, event_json
from proxy.hooks.recall import Identified, Plan, append_text, encode, hooked, identify, recall
from proxy.identity import subject_for
from proxy.learn.turn import Turn, latest_user_texts, message_text, previous_user_texts
from proxy.runtime import Runtime


def inject(messages: list[Any], block: str) -> list[Any]:
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            content = message.get("content")
            if isinstance(content, list):
                updated = {**message, "content": [*content, {"type": "text", "text": block}]}
            else:
                updated = {**message, "content": append_text(content, block)}
            return [*messages[:index], updated, *messages[index + 1 :]]
    return [{"role": "system", "content": block}, *messages]


def answer(data: Any) -> tuple[str | None, str]:
    """Completion id and assistant text, from a JSON body or from the assembled stream chunks."""
    if isinstance(data, dict):
        choices = data.get("choices") or [{}]
        return data.get("id"), message_text((choices[0].get("message") or {}).get("content"))
    completion_id, parts = None, []
    for event in data:
        chunk = event_json(event)
        if not isinstance(chunk, dict):
            continue
        completion_id = completion_id or chunk.get("id")
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                parts.append((choice.get("delta") or {}).get("content") or "")
    return completion_id, "".join(parts)


def build_turn(memory: Identified, body: dict[str, Any], user: list[str], data: Any) -> Turn | None:
    completion_id, text = answer(data)
    if not completion_id:
        return None
    source = {"completion_id": completion_id}
    model = body.get("model")
    return Turn(memory.owner, "chat", completion_id, user, [text], source, model, started_at=memory.at)


@hooked
async def create_chat_completion(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    messages = body.get("messages") if body else None
    if body is None or not isinstance(messages, list):
        return Plan()
    memory = identify(request, runtime, subject_for(request.headers, runtime.settings, body))
    if not isinstance(memory, Identified):
        return Plan(memory=memory)
    user = latest_user_texts(messages)
    memory = await recall(runtime, memory, "\n".join(user), previous="\n".join(previous_user_texts(messages)))
    if memory.block:
        body["messages"] = inject(messages, memory.block)
    tap = TurnTap(runtime, stream=bool(body.get("stream")), build=partial(build_turn, memory, body, user))
    return Plan(encode(body) if memory.block else None, memory, tap)
