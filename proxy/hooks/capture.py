"""The after-hook: read a copy of the answer as it streams by, then queue the turn for extraction.

A tap only sees bytes that already went to the client. It keeps a JSON body (bounded) or the
parsed SSE events, and when the response ended complete and successful, a route-specific
``build`` makes the Turn. Nothing here can fail the client's response; failures are counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from proxy.hooks.recall import report_fault
from proxy.learn.turn import Turn, enqueue_turn, redact_turn
from proxy.owner import Owner
from proxy.runtime import Runtime
from proxy.sse import Event, SSEParser

log = logging.getLogger("memproxy.hooks")

MAX_JSON_BODY = 8 * 1024 * 1024

Builder = Callable[[Any], Turn | None]
"""Given the parsed JSON body, or the list of SSE events, the turn to learn from (or None)."""


class TurnTap:
    """Keeps what a response's consumer needs (JSON body or SSE events) and queues its turn at the end."""

    def __init__(self, runtime: Runtime, *, stream: bool, build: Builder) -> None:
        self.runtime, self.stream, self.build = runtime, stream, build
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
            report_fault(self.runtime, "capture_error", exc)

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
    """Queue a finished turn once, and nudge the in-process worker instead of waiting for its poll.

    While the state store cannot take it (not open yet, or failing), the turn goes to the local spool,
    delivered in order once the store is back; so do turns finishing while older ones are spooled,
    to keep the order. If the spool fails too, the turn is lost: counted (``turns.lost``) and logged.
    The client already has its answer either way: capture runs after the response was sent.
    """
    if not any(text.strip() for text in turn.user):
        return  # nothing to learn (enqueue_turn would skip it too)
    turn, kinds = await redact_turn(turn, runtime.redactor)  # neither the queue nor the spool keeps a secret
    count_redactions(runtime, kinds)
    if not runtime.spool.pending:
        try:
            queued = await enqueue_turn(runtime.state, turn)
        except Exception as exc:  # noqa: BLE001 - the store is away: keep the turn on local disk
            log.warning("state store unavailable for a finished turn (%s): spooled", type(exc).__name__)
        else:
            if queued:
                runtime.count("turns.captured")
                if runtime.worker is not None:
                    runtime.worker.wake()
            return
    await spool(runtime, turn)


async def spool(runtime: Runtime, turn: Turn) -> None:
    """Keep a finished turn on local disk until the state store takes it (:mod:`proxy.learn.spool`)."""
    try:
        await runtime.spool.append(turn)
    except Exception as exc:  # noqa: BLE001 - counted exactly: nothing else can tell the client now
        runtime.count("turns.lost")
        log.error("a finished turn was lost: neither the state store nor the spool took it (%s)", type(exc).__name__)
        return
    runtime.count("turns.spooled")
    runtime.kick_spool()


PARKED_TTL = 86400.0


def count_redactions(runtime: Runtime, kinds: Iterable[str]) -> None:
    for kind in kinds:
        runtime.count(f"redactions.{kind}")


async def redacted_texts(runtime: Runtime, texts: list[str]) -> list[str]:
    """``texts`` with every secret replaced by a marker (counted): what the state store may keep of them."""
    found = await runtime.redactor.redact_off_loop(texts)
    count_redactions(runtime, [kind for redacted in found for kind in redacted.kinds])
    return [redacted.text for redacted in found]


async def park(
    runtime: Runtime, namespace: str, owner: Owner, turn_id: str, started_at: float, *, user: list[str], **record: Any
) -> None:
    """A turn still being answered: keep who asked, when, what they said (secrets as markers) and what
    capturing it later needs, until it ends."""
    mine = runtime.state.tenant(owner.tenant)
    said = await redacted_texts(runtime, user)
    kept = {"subject": owner.subject, "started_at": started_at, "user": said, **record}
    await mine.set(namespace, turn_id, kept, ttl=PARKED_TTL, subject=owner)


Parked = tuple[Owner, dict[str, Any]]
"""A parked turn's owner and the record kept with it."""


def started_of(record: dict[str, Any]) -> float:
    """When a parked turn began (0 for a record parked before the time was kept: its job's creation counts)."""
    value = record.get("started_at")
    return float(value) if isinstance(value, int | float) else 0.0


async def parked(runtime: Runtime, namespace: str, tenant: str, turn_id: str) -> Parked | None:
    found = await runtime.state.tenant(tenant).get(namespace, turn_id)
    if not isinstance(found, dict) or not isinstance(found.get("subject"), str):
        return None
    return Owner.of(runtime.secret, tenant, found["subject"]), found


async def unpark(runtime: Runtime, namespace: str, tenant: str, turn_id: str) -> Parked | None:
    """The parked turn, to the one caller that removes it first: polls and followers may race."""
    found = await parked(runtime, namespace, tenant, turn_id)
    if found is not None and await runtime.state.tenant(tenant).delete(namespace, turn_id):
        return found
    return None


def event_json(event: Event) -> Any:
    try:
        return json.loads(event.data)
    except ValueError:
        return None
