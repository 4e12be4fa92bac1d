"""A finished turn: what the taps hand to the extraction worker, through the job queue.

The hooks produce one :class:`Turn` per answered run / response / chat completion and enqueue it
once (idempotency key = tenant + turn id, so a retried poll or a replayed stream adds nothing).
The payload carries the turn's text because the worker needs it, but never a credential; it lives
in the queue only until the job is acknowledged, and erasing a subject drops its pending jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from proxy.state import State, Subject

JOB_KIND = "extract"
Route = Literal["assistants", "responses", "chat", "migration"]


@dataclass
class Turn:
    tenant: str
    subject: str
    route: Route
    turn_id: str
    user: list[str]
    assistant: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    model: str | None = None

    def payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Turn:
        return cls(**payload)


async def enqueue_turn(state: State, turn: Turn) -> str | None:
    """Queue extraction of ``turn``; a turn with no user text teaches nothing and is skipped."""
    if not any(text.strip() for text in turn.user):
        return None
    return await state.enqueue(
        JOB_KIND,
        turn.payload(),
        idempotency_key=f"{turn.tenant}:{turn.turn_id}",
        subject=Subject(turn.tenant, turn.subject),
    )
