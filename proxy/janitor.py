"""Expiry, enforced: expired memories are removed on a schedule, and every removal is audited.

Recall never returns an expired memory anyway (every query filters on ``expires_at``); the janitor
makes the deletion real and leaves the proof: one audit entry per subject with the count removed.
The store knows owners by pseudonym only (no subject id on disk), and so does the janitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime

from proxy import audit
from proxy.memory.service import MemoryService
from proxy.state import State

log = logging.getLogger("memproxy.janitor")


async def sweep(memory: MemoryService, state: State, secret: bytes, now: datetime | None = None) -> int:
    """Remove what has expired by ``now``; returns how many memories went."""
    removed = await memory.expire(now)
    per_subject = Counter((item.tenant, item.owner_hash) for item in removed)
    for (tenant, owner_hash), count in per_subject.items():
        await audit.append(
            state, "expire", secret=secret, tenant=tenant, subject_hash=owner_hash, counts={"memories": count}
        )
    if removed:
        log.info("janitor removed %d expired memories of %d subjects", len(removed), len(per_subject))
    return len(removed)


async def run(memory: MemoryService, state: State, secret: bytes, interval: float) -> None:
    """Sweep every ``interval`` seconds until cancelled; a failed sweep is retried next time."""
    while True:
        try:
            await sweep(memory, state, secret)
        except Exception:
            log.exception("janitor sweep failed")
        await asyncio.sleep(interval)


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
