"""Where the engine keeps what the upstream does not: assistants, threads, runs, steps, message extras.

The bridge passes the proxy's :class:`proxy.state.State` (SQLite or Redis, shared by replicas); the
emulator passes :class:`MemoryRecords`. Both satisfy :class:`Records`, a slice of ``State``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Protocol

from proxy.state.base import RecordPage, UnknownCursor


class Records(Protocol):
    async def put_record(self, tenant: str, collection: str, id: str, record: dict[str, Any]) -> None: ...

    async def get_record(self, tenant: str, collection: str, id: str) -> dict[str, Any] | None: ...

    async def delete_record(self, tenant: str, collection: str, id: str) -> bool: ...

    async def list_records(
        self,
        tenant: str,
        collection: str,
        *,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> RecordPage: ...

    async def set_add(self, ns: str, key: str, *members: str) -> int:
        """Add members, answering how many were new: an atomic "first one wins" across replicas."""
        ...


class MemoryRecords:
    """:class:`Records` in process memory, for one emulator instance."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._sets: dict[tuple[str, str], set[str]] = {}

    def clear(self) -> None:
        self._records.clear()
        self._sets.clear()

    async def put_record(self, tenant: str, collection: str, id: str, record: dict[str, Any]) -> None:
        self._records.setdefault((tenant, collection), {})[id] = copy.deepcopy(record)

    async def get_record(self, tenant: str, collection: str, id: str) -> dict[str, Any] | None:
        record = self._records.get((tenant, collection), {}).get(id)
        return copy.deepcopy(record)

    async def delete_record(self, tenant: str, collection: str, id: str) -> bool:
        return self._records.get((tenant, collection), {}).pop(id, None) is not None

    async def list_records(
        self,
        tenant: str,
        collection: str,
        *,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> RecordPage:
        records = self._records.get((tenant, collection), {})
        ids = list(records) if (order == "asc") == (before is None) else list(records)[::-1]
        cursor = after or before
        if cursor is not None:
            if cursor not in records:
                raise UnknownCursor(cursor)
            ids = ids[ids.index(cursor) + 1 :]
        items = [copy.deepcopy(records[i]) for i in ids[:limit]]
        if before is not None:
            items.reverse()
        return RecordPage(items=items, has_more=len(ids) > limit)

    async def set_add(self, ns: str, key: str, *members: str) -> int:
        found = self._sets.setdefault((ns, key), set())
        new = set(members) - found
        found |= new
        return len(new)
