"""Preconditions shared by the resource modules: checks that need the thread's runs, answered as 400s.

Lower than ``messages``, ``threads`` and ``runs`` (it only reads run records and reconciles them),
so each of those can ask it without importing another.
"""

from __future__ import annotations

from proxy.assistants import reconcile
from proxy.assistants.engine import Engine, runs_of
from proxy.assistants.objects import ACTIVE
from proxy.assistants.run_record import RunRecord
from proxy.errors import OpenAIError


async def ensure_idle(engine: Engine, thread_id: str, action: str) -> None:
    """400 while the thread's latest run is still active, as OpenAI refuses then."""
    page = await engine.records.list_records(engine.tenant, runs_of(thread_id), limit=1, order="desc")
    latest = RunRecord.from_stored(page.items[0]) if page.items else None
    if latest is not None and latest.status in ACTIVE:
        run = await reconcile.refresh(engine, latest)
        if run.status in ACTIVE:
            raise OpenAIError(400, f"Can't {action} {thread_id} while a run {run.id} is active.")
