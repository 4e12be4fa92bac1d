"""A finished turn: what the taps hand to the extraction worker, through the job queue, and the text of one.

The hooks produce one :class:`Turn` per answered run / response / chat completion and enqueue it
once (idempotency key = tenant + turn id, so a retried poll or a replayed stream adds nothing).
The payload carries the turn's text because the worker needs it, but never a credential; it lives
in the queue only until the job is acknowledged, and erasing a subject drops its pending jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from proxy.memory.redact import Redactor
from proxy.owner import Owner
from proxy.state import State

JOB_KIND = "extract"
Route = Literal["assistants", "responses", "chat", "migration"]


@dataclass
class Turn:
    """One answered exchange of one owner: the user's messages, the answer, and where it happened."""

    owner: Owner
    route: Route
    turn_id: str
    user: list[str]
    assistant: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    started_at: float = 0.0
    """When the turn began (seconds since the epoch): an erasure from then on fences it
    (:mod:`proxy.fence`). 0 for turns queued before this field existed: the job's creation stands in."""

    def payload(self) -> dict[str, Any]:
        """The job payload (tenant and subject spelled out: the worker rebuilds the owner from them)."""
        fields = {"route": self.route, "turn_id": self.turn_id, "user": self.user, "assistant": self.assistant}
        extra = {"source": self.source, "model": self.model, "started_at": self.started_at}
        return {"tenant": self.owner.tenant, "subject": self.owner.subject, **fields, **extra}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], secret: bytes) -> Turn:
        """The turn a job carries; ValueError or TypeError when the payload is not one."""
        fields = dict(payload)
        owner = Owner.of(secret, fields.pop("tenant", None), fields.pop("subject", None))
        return cls(owner, **fields)


async def redact_turn(turn: Turn, redactor: Redactor) -> tuple[Turn, tuple[str, ...]]:
    """``turn`` with every secret in its texts replaced by a marker, and the kinds replaced.

    What the job queue and the spool keep until the worker is done with it: a card number or a key the
    user typed never reaches the state store's files (:mod:`proxy.memory.redact`).
    """
    found = await redactor.redact_off_loop([*turn.user, *turn.assistant])
    kinds = tuple(kind for redacted in found for kind in redacted.kinds)
    if not kinds:
        return turn, ()
    cleaned = [redacted.text for redacted in found]
    return replace(turn, user=cleaned[: len(turn.user)], assistant=cleaned[len(turn.user) :]), kinds


async def enqueue_turn(state: State, turn: Turn) -> str | None:
    """Queue extraction of ``turn``; a turn with no user text teaches nothing and is skipped."""
    if not any(text.strip() for text in turn.user):
        return None
    return await state.enqueue(
        JOB_KIND,
        turn.payload(),
        idempotency_key=f"{turn.owner.tenant}:{turn.turn_id}",
        subject=turn.owner,
    )


def message_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of text parts of any API's flavour."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        return "\n".join(part if isinstance(part, str) else part.get("value", "") for part in parts if part)
    return ""


def _ends_turn(item: dict[str, Any]) -> bool:
    """An assistant message or a tool call or output: what separates two user turns."""
    return item.get("role") == "assistant" or item.get("type") in ("function_call_output", "function_call")


def latest_user_texts(items: list[Any]) -> list[str]:
    """The user messages of the newest turn: those after the last assistant message or tool output."""
    texts: list[str] = []
    for item in reversed(items):
        if not isinstance(item, dict):
            continue
        if item.get("role") == "user":
            texts.append(message_text(item.get("content")))
        elif _ends_turn(item):
            break
    return [text for text in reversed(texts) if text.strip()]


def previous_user_texts(items: list[Any]) -> list[str]:
    """The user messages of the turn before the newest (see :func:`latest_user_texts`), if any."""
    ends = [i for i, item in enumerate(items) if isinstance(item, dict) and _ends_turn(item)]
    if not ends:
        return []
    earlier = items[: ends[-1]]
    while earlier and isinstance(earlier[-1], dict) and _ends_turn(earlier[-1]):
        earlier = earlier[:-1]
    return latest_user_texts(earlier)
