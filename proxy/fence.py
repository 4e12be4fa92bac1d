"""The erasure fence: once an owner is erased, nothing from before the erasure writes its memories again.

An erasure raises the owner's fence (the time it started) before it deletes anything. Every turn
carries the time it began (``Turn.started_at``: the request's arrival, or the parking of a run still
being answered); the worker drops a turn that began before the fence, and checks again after it has
written, undoing what it just added if a fence rose meanwhile. So a job queued, claimed or running
when the erasure starts can never bring a memory back, on any replica sharing the state store; a
turn that begins after the erasure is a new life and is learned normally.

The fence is kept apart from the owner's indexed entries (erasure removes those) and expires after
:data:`FENCE_TTL`, longer than any job, parked run or retry lives. It holds a time and the owner's
pseudonym, nothing else.
"""

from __future__ import annotations

from proxy.owner import Owner
from proxy.state import State

FENCE_NS = "erasure_fence"
FENCE_TTL = 30 * 86400.0


async def raise_fence(state: State, owner: Owner, at: float) -> None:
    """Fence everything of ``owner`` that began at or before ``at`` (seconds since the epoch)."""
    await state.tenant(owner.tenant).set(FENCE_NS, owner.hash, at, ttl=FENCE_TTL)


async def fenced(state: State, owner: Owner, began: float) -> bool:
    """True when an erasure of ``owner`` started at or after ``began``: that work must not be stored."""
    fence = await state.tenant(owner.tenant).get(FENCE_NS, owner.hash)
    return isinstance(fence, int | float) and began <= fence
