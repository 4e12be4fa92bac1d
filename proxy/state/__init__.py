"""State shared by proxy replicas: key/value with TTL, records, job queue (see :mod:`proxy.state.base`).

``open_state(settings)`` picks the backend: Redis when ``MEMPROXY_REDIS_URL`` is set (several
replicas), otherwise SQLite at ``<data_dir>/state.sqlite3`` (one replica, durable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.state.base import (
    CHAIN_HEAD_NS,
    ChainConflict,
    ChainHead,
    Clock,
    Erased,
    Job,
    JobPolicy,
    ManualClock,
    RecordPage,
    State,
    TenantState,
    UnknownCursor,
)

if TYPE_CHECKING:
    from proxy.config import Settings

SQLITE_FILE = "state.sqlite3"

__all__ = [
    "CHAIN_HEAD_NS",
    "ChainConflict",
    "ChainHead",
    "Clock",
    "Erased",
    "Job",
    "JobPolicy",
    "ManualClock",
    "RecordPage",
    "State",
    "TenantState",
    "UnknownCursor",
    "open_state",
]


async def open_state(settings: Settings, *, clock: Clock | None = None) -> State:
    """Open the configured backend; the caller closes it (``async with`` works too)."""
    policy = JobPolicy.from_settings(settings)
    if settings.redis_url:
        from proxy.state.redis import RedisState

        return await RedisState.connect(settings.redis_url, prefix=settings.redis_prefix, clock=clock, policy=policy)
    from proxy.state.sqlite import SqliteState

    return await SqliteState.open(settings.data_dir / SQLITE_FILE, clock=clock, policy=policy)
