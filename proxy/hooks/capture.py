"""The after-hook: read a copy of the answer as it streams by, then queue the turn for extraction.

A tap only sees bytes that already went to the client. It keeps a JSON body (bounded) or the
parsed SSE events, and when the response ended complete and successful, a route-specific
``build`` makes the Turn. Nothing here can fail the client's response; failures are counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from proxy.hooks.recall import RequestMemory, degrade
from proxy.runtime import Runtime
from proxy.sse import Event, SSEParser
from proxy.state import Subject
from proxy.turns import Turn, enqueue_turn

log = logging.getLogger("memproxy.hooks")

MAX_JSON_BODY = 8 * 1024 * 1024

Builder = Callable[[Any], Turn | None]
"""Given the parsed JSON body, or the list of SSE events, the turn to learn from (or None)."""


class TurnTap:
    def __init__(self, runtime: Runtime, memory: RequestMemory, *, stream: bool, build: Builder) -> None:
        self.runtime, self.memory, self.stream, self.build = runtime, memory, stream, build
        self.parser = SSEParser() if stream else None
        self.events: list[Event] = []
        self.chunks: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        if self.parser is not None:
            self.events.extend(self.parser.feed(chunk))
            return
        self.size += len(chunk)
        if self.size <= MAX_JSON_BODY:
            self.chunks.append(chunk)

    async def finish(self, status: int, complete: bool) -> None:
        try:
            await self.capture(status, complete)
        except Exception as exc:  # noqa: BLE001 - a lost memory, never a failed response
            degrade(self.runtime, self.memory, "capture_error", exc)

    def body(self) -> Any:
        """The parsed answer: the list of SSE events, or the JSON body (None if not JSON)."""
        if self.stream:
            return self.events
        try:
            return json.loads(b"".join(self.chunks))
        except ValueError:
            return None

    async def capture(self, status: int, complete: bool) -> None:
        """Queue the finished turn; subclasses that learn more than a turn override this."""
        if status != 200 or not complete or self.size > MAX_JSON_BODY:
            return
        turn = self.build(self.body())
        if turn is not None:
            await queue(self.runtime, turn)


async def queue(runtime: Runtime, turn: Turn) -> None:
    """Queue a finished turn once, and nudge the in-process worker instead of waiting for its poll."""
    if await enqueue_turn(runtime.state, turn):
        runtime.count("turns.captured")
        if runtime.worker is not None:
            runtime.worker.wake()


PARKED_TTL = 86400.0


async def park(runtime: Runtime, namespace: str, memory: RequestMemory, turn_id: str, **record: Any) -> None:
    """A turn still being answered: keep who asked and what capturing it later needs, until it ends."""
    owner = Subject(memory.tenant, memory.subject)
    await runtime.state.set(
        namespace, f"{memory.tenant}:{turn_id}", {"subject": memory.subject, **record}, ttl=PARKED_TTL, subject=owner
    )


async def parked(runtime: Runtime, namespace: str, tenant: str, turn_id: str) -> dict[str, Any] | None:
    found = await runtime.state.get(namespace, f"{tenant}:{turn_id}")
    return found if isinstance(found, dict) else None


async def unpark(runtime: Runtime, namespace: str, tenant: str, turn_id: str) -> dict[str, Any] | None:
    """The parked record, to the one caller that removes it first: polls and followers may race."""
    found = await parked(runtime, namespace, tenant, turn_id)
    if found is not None and await runtime.state.delete(namespace, f"{tenant}:{turn_id}"):
        return found
    return None


def event_json(event: Event) -> Any:
    try:
        return json.loads(event.data)
    except ValueError:
        return None


def message_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of text parts of any API's flavour."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return "\n".join(part if isinstance(part, str) else part.get("value", "") for part in parts if part)
    return ""


def latest_user_texts(items: list[Any]) -> list[str]:
    """The user messages of the newest turn: those after the last assistant message or tool output."""
    texts: list[str] = []
    for item in reversed(items):
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if role == "user":
            texts.append(message_text(item.get("content")))
        elif role == "assistant" or item.get("type") in ("function_call_output", "function_call"):
            break
    return [text for text in reversed(texts) if text.strip()]
