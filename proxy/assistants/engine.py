"""The engine's per-request context: who is asking, where records live, which upstream answers.

One :class:`Engine` is built per request (cheap: it only holds references), by the bridge from the
proxy's runtime and by the emulator from its own state. The resource modules (``assistants``,
``threads``, ``messages``, ``runs``) are plain functions over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.assistants.hooks import RunHooks
from proxy.assistants.records import Records
from proxy.assistants.upstream import Upstream
from proxy.assistants.validation import invalid, not_found
from proxy.state.base import RecordPage, UnknownCursor

ASSISTANTS = "assistants"
THREADS = "threads"
AFTER_RUN_NS = "assistants_after_run"


def messages_of(thread_id: str) -> str:
    """Collection of a thread's message extras (metadata, run, assistant), keyed by item id."""
    return f"messages:{thread_id}"


def runs_of(thread_id: str) -> str:
    return f"runs:{thread_id}"


def steps_of(run_id: str) -> str:
    return f"steps:{run_id}"


@dataclass
class Engine:
    records: Records
    upstream: Upstream
    tenant: str
    hooks: RunHooks = field(default_factory=RunHooks)

    async def get(self, collection: str, object_id: str, kind: str) -> dict[str, Any]:
        """A record of this tenant, or the API's 404 naming ``kind``."""
        record = await self.records.get_record(self.tenant, collection, object_id)
        if record is None:
            raise not_found(kind, object_id)
        return record

    async def put(self, collection: str, record: dict[str, Any]) -> None:
        await self.records.put_record(self.tenant, collection, record["id"], record)

    async def page(self, collection: str, params: dict[str, Any]) -> RecordPage:
        """One page of records with the list parameters of :func:`validation.check_list_params`."""
        try:
            return await self.records.list_records(self.tenant, collection, **params)
        except UnknownCursor as exc:
            name = "after" if params.get("after") else "before"
            raise invalid(name, f"no object with id '{exc.args[0]}' in this list.") from None

    async def delete_all(self, collection: str) -> None:
        """Remove every record of a collection (a deleted thread's runs, a deleted run's steps)."""
        while True:
            page = await self.records.list_records(self.tenant, collection, limit=100, order="asc")
            for record in page.items:
                await self.records.delete_record(self.tenant, collection, record["id"])
            if not page.has_more:
                return

    async def thread(self, thread_id: str) -> dict[str, Any]:
        return await self.get(THREADS, thread_id, "thread")
