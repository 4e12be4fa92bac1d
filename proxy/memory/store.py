"""The vector store interface, and what both backends share: scopes, filters, payload conversion.

Isolation is built in, not left to callers: every store operation but the janitor's
:meth:`MemoryStore.find_expired` takes a :class:`Owner` (tenant AND subject, both non-empty, checked
at construction), and every filter a backend sends is built by :func:`build_filter`, which always
starts with ``tenant == scope.tenant AND subject == scope.subject``. A backend translates a filter
through a small :class:`FilterDialect`, so the filter logic itself exists once. Likewise the store
operations themselves live once, in :class:`MemoryStore`; a backend supplies only its dialect and a
few primitives that speak its API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from proxy.errors import MemproxyError
from proxy.owner import Owner

from .models import Memory, as_utc

DENSE = "dense"
SPARSE = "bm25"

#: Reciprocal-rank-fusion constant; Qdrant's own default, so both backends fuse the same way.
RRF_K = 2

#: Payload fields with an index, and the index type. ``tenant`` is a tenant index on a server.
INDEXED_FIELDS: dict[str, str] = {
    "tenant": "keyword",
    "subject": "keyword",
    "expires_at": "datetime",
    "state": "keyword",
    "assistant_id": "keyword",
    "content_hash": "keyword",
}

STATE_ACTIVE = "active"
STATE_DELETED = "deleted"


class StoreError(MemproxyError, RuntimeError):
    """The vector store cannot be used as configured."""


class DimensionMismatchError(StoreError):
    """An existing collection's dense vectors have a different size than the embedder produces."""

    def __init__(self, collection: str, stored: int, expected: int, where: str = "") -> None:
        self.collection, self.stored, self.expected = collection, stored, expected
        super().__init__(
            f"collection {collection!r}{f' at {where}' if where else ''} stores dense vectors of size {stored}, "
            f"but the configured embedder produces size {expected}. Use the embedder the collection was built "
            f"with, or point MEMPROXY_COLLECTION (or the data directory) at a new collection and re-import."
        )


def require_scope(scope: object) -> Owner:
    if not isinstance(scope, Owner):
        raise TypeError(f"store operations take an Owner(tenant, subject), got {type(scope).__name__}")
    return scope


@dataclass(frozen=True, slots=True)
class SparseVec:
    """Backend-neutral sparse vector (BM25 term hashes and weights)."""

    indices: list[int]
    values: list[float]


@dataclass(frozen=True, slots=True)
class MemoryPoint:
    """A memory with its vectors, as written to the store."""

    memory: Memory
    dense: Sequence[float]
    sparse: SparseVec


@dataclass(slots=True)
class Hit:
    """A memory returned by a vector query: ``score`` is the backend's (cosine for a dense query, RRF for
    hybrid); ``dense`` is the stored (normalized) dense vector when it was asked for."""

    memory: Memory
    score: float
    dense: list[float] | None = None


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """What a scoped read or write may see. ``now`` hides memories expired at ``now`` (None: show them)."""

    scope: Owner
    now: datetime | None = None
    include_deleted: bool = False
    assistant_id: str | None = None  # restrict to this assistant's memories + unassigned ones
    ids: tuple[str, ...] | None = None
    content_hash: str | None = None
    expired_at: datetime | None = None  # only memories expired at this time (the janitor's delete)

    def __post_init__(self) -> None:
        require_scope(self.scope)


C = TypeVar("C")
F = TypeVar("F")
C_co = TypeVar("C_co", covariant=True)
F_co = TypeVar("F_co", covariant=True)


class FilterDialect(Protocol[C_co, F_co]):
    """How one backend spells the few conditions memory filters use."""

    def match(self, key: str, value: str) -> C_co: ...
    def expired(self, key: str, at: datetime) -> C_co: ...  # key holds a datetime <= at
    def is_empty(self, key: str) -> C_co: ...
    def has_ids(self, ids: Sequence[str]) -> C_co: ...
    def combine(self, must: list[Any], should: list[Any], must_not: list[Any]) -> F_co: ...


def build_filter(spec: FilterSpec, d: FilterDialect[C, F]) -> F:
    """The one place a memory filter is built. It always begins with tenant AND subject."""
    scope = require_scope(spec.scope)
    must: list[Any] = [d.match("tenant", scope.tenant), d.match("subject", scope.subject)]
    must_not: list[Any] = []
    if spec.ids is not None:
        must.append(d.has_ids(list(spec.ids)))
    if spec.content_hash is not None:
        must.append(d.match("content_hash", spec.content_hash))
    if spec.assistant_id is not None:
        must.append(d.combine([], [d.match("assistant_id", spec.assistant_id), d.is_empty("assistant_id")], []))
    if not spec.include_deleted:
        must_not.append(d.match("state", STATE_DELETED))
    if spec.now is not None:
        must_not.append(d.expired("expires_at", as_utc(spec.now)))
    if spec.expired_at is not None:
        must.append(d.expired("expires_at", as_utc(spec.expired_at)))
    return d.combine(must, [], must_not)


def build_expired_filter(now: datetime, d: FilterDialect[C, F]) -> F:
    """Unscoped: memories of every tenant expired at ``now``. Only the janitor reads with it."""
    return d.combine([d.expired("expires_at", as_utc(now))], [], [])


# --- payload conversion ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def memory_to_payload(memory: Memory) -> dict[str, Any]:
    """The JSON payload of a point. Datetimes are RFC 3339 UTC strings (Qdrant's datetime index reads them)."""
    payload = memory.model_dump(mode="json", exclude={"id"})
    for key in ("created_at", "updated_at", "expires_at", "last_accessed_at", "deleted_at"):
        payload[key] = _iso(getattr(memory, key))
    payload["state"] = STATE_DELETED if memory.deleted else STATE_ACTIVE
    return payload


def payload_to_memory(point_id: object, payload: dict[str, Any] | None) -> Memory:
    """Read a point back. Unknown payload keys (``state``, or a newer version's fields) are ignored."""
    data = {k: v for k, v in (payload or {}).items() if k in Memory.model_fields}
    return Memory.model_validate({**data, "id": str(point_id)})


def access_payload(access_count: int, last_accessed_at: datetime) -> dict[str, Any]:
    return {"access_count": access_count, "last_accessed_at": _iso(last_accessed_at)}


def tombstone_payload(deleted_at: datetime, reason: str | None) -> dict[str, Any]:
    return {"state": STATE_DELETED, "deleted_at": _iso(deleted_at), "deleted_reason": reason}


def expiry_payload(expires_at: datetime | None) -> dict[str, Any]:
    return {"expires_at": _iso(expires_at)}


# --- the interface -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Page:
    memories: list[Memory] = field(default_factory=list)
    next_cursor: str | None = None


def check_points(scope: Owner, points: Iterable[MemoryPoint], dim: int) -> list[MemoryPoint]:
    """Refuse to write a memory outside ``scope`` or with a wrongly sized vector."""
    scope = require_scope(scope)
    checked = list(points)
    for point in checked:
        memory = point.memory
        if memory.tenant != scope.tenant or memory.subject != scope.subject:
            raise ValueError(f"memory {memory.id} belongs to another scope than the one written to")
        if len(point.dense) != dim:
            raise ValueError(f"dense vector of size {len(point.dense)} written to a collection of size {dim}")
    return checked


# --- what both backends share ------------------------------------------------------------------------


class MemoryStore(ABC):
    """The vector store of memories, declared once: its operations, written once for both Qdrant backends.

    Every operation but :meth:`find_expired` is confined to one :class:`~proxy.owner.Owner`.

    Each operation builds its filter here (always through :func:`build_filter`, so always scoped) and
    hands it to a primitive: a subclass sets ``dialect`` and implements the ``_``-prefixed abstract
    methods in its own API, and nothing else about reading or writing memories.
    """

    collection: str
    dim: int
    #: How this backend spells filter conditions.
    dialect: ClassVar[FilterDialect[Any, Any]]

    def _filter(self, spec: FilterSpec) -> Any:
        return build_filter(spec, self.dialect)

    @abstractmethod
    async def start(self) -> None:
        """Open or create the collection; raise DimensionMismatchError if its dense size differs from ``dim``."""

    @abstractmethod
    async def close(self) -> None: ...

    # --- primitives --------------------------------------------------------------------------------

    @abstractmethod
    async def _upsert(self, points: list[MemoryPoint]) -> None:
        """Write points already checked against the scope (never empty)."""

    @abstractmethod
    async def _set_payloads(self, updates: list[tuple[Any, dict[str, Any]]]) -> None:
        """Merge each ``fields`` into the points matching its filter, in order (never empty)."""

    @abstractmethod
    async def _delete(self, flt: Any) -> None:
        """Hard-delete the points matching ``flt``."""

    async def _erase(self, flt: Any) -> int:
        """Count, then hard-delete, the points matching ``flt``; return the count."""
        n = await self._count(flt)
        await self._delete(flt)
        return n

    @abstractmethod
    async def _count(self, flt: Any) -> int:
        """Exact number of points matching ``flt``."""

    @abstractmethod
    async def _scroll_records(self, flt: Any, limit: int, cursor: str | None) -> tuple[list[Any], Any]:
        """Up to ``limit`` records (with payloads, without vectors) matching ``flt`` in id order from
        ``cursor``, and the backend's next offset (None at the end)."""

    @abstractmethod
    async def _hybrid(self, flt: Any, dense: Sequence[float], sparse: SparseVec, limit: int) -> list[Any]:
        """Dense and (if ``sparse`` has terms) BM25 prefetches fused with RRF (k = :data:`RRF_K`), both
        prefetches and the fusion filtered by ``flt``; scored points with payloads and the dense vector."""

    @abstractmethod
    async def _dense(self, flt: Any, dense: Sequence[float], limit: int) -> list[Any]:
        """Nearest by cosine, filtered by ``flt``; scored points with payloads, without vectors."""

    # --- writes ------------------------------------------------------------------------------------

    async def upsert(self, scope: Owner, points: Sequence[MemoryPoint]) -> None:
        """Insert or replace memories; every point must belong to ``scope``."""
        checked = check_points(scope, points, self.dim)
        if checked:
            await self._upsert(checked)

    async def set_payloads(self, scope: Owner, updates: dict[str, dict[str, Any]]) -> None:
        """Merge payload fields into the given memories (id -> fields), if they exist in ``scope``."""
        require_scope(scope)
        ops = [
            (self._filter(FilterSpec(scope, include_deleted=True, ids=(mid,))), fields)
            for mid, fields in updates.items()
        ]
        if ops:
            await self._set_payloads(ops)

    async def delete(self, scope: Owner, ids: Sequence[str], *, expired_at: datetime | None = None) -> None:
        """Hard-delete memories of ``scope`` among ``ids`` (only those expired at ``expired_at`` if given)."""
        require_scope(scope)
        if not ids:
            return
        await self._delete(self._filter(FilterSpec(scope, include_deleted=True, ids=tuple(ids), expired_at=expired_at)))

    async def delete_scope(self, scope: Owner) -> int:
        """Hard-delete every memory of ``scope``, tombstones included; return how many there were."""
        return await self._erase(self._filter(FilterSpec(scope, include_deleted=True)))

    # --- reads -------------------------------------------------------------------------------------

    async def _scroll(self, flt: Any, limit: int, cursor: str | None = None) -> tuple[list[Memory], str | None]:
        records, next_offset = await self._scroll_records(flt, limit, cursor)
        memories = [payload_to_memory(r.id, r.payload) for r in records]
        return memories, (str(next_offset) if next_offset is not None else None)

    @staticmethod
    def _hits(points: list[Any], with_dense: bool) -> list[Hit]:
        hits = []
        for p in points:
            dense = p.vector.get(DENSE) if with_dense and isinstance(p.vector, dict) else None
            hits.append(Hit(payload_to_memory(p.id, p.payload), float(p.score), list(dense) if dense else None))
        return hits

    async def hybrid_query(
        self,
        scope: Owner,
        dense: Sequence[float],
        sparse: SparseVec,
        *,
        limit: int,
        now: datetime,
        assistant_id: str | None = None,
    ) -> list[Hit]:
        """Dense and BM25 candidates fused with RRF; not deleted, not expired at ``now``. Hits carry ``dense``."""
        flt = self._filter(FilterSpec(scope, now=now, assistant_id=assistant_id))
        return self._hits(await self._hybrid(flt, dense, sparse, limit), with_dense=True)

    async def dense_query(
        self,
        scope: Owner,
        dense: Sequence[float],
        *,
        limit: int,
        now: datetime,
        assistant_id: str | None = None,
    ) -> list[Hit]:
        """Nearest by cosine (``score`` is the cosine), not deleted, not expired at ``now``."""
        flt = self._filter(FilterSpec(scope, now=now, assistant_id=assistant_id))
        return self._hits(await self._dense(flt, dense, limit), with_dense=False)

    async def get(
        self,
        scope: Owner,
        ids: Sequence[str],
        *,
        now: datetime | None = None,
        include_deleted: bool = True,
    ) -> list[Memory]:
        """Memories of ``scope`` among ``ids``; ``now`` hides the expired."""
        require_scope(scope)
        if not ids:
            return []
        flt = self._filter(FilterSpec(scope, now=now, include_deleted=include_deleted, ids=tuple(ids)))
        memories, _ = await self._scroll(flt, len(ids))
        return memories

    async def find(
        self,
        scope: Owner,
        *,
        content_hash: str,
        now: datetime | None = None,
        assistant_id: str | None = None,
        limit: int = 1,
    ) -> list[Memory]:
        """Live (not deleted) memories of ``scope`` with this content hash."""
        flt = self._filter(FilterSpec(scope, now=now, assistant_id=assistant_id, content_hash=content_hash))
        memories, _ = await self._scroll(flt, limit)
        return memories

    async def scroll(
        self,
        scope: Owner,
        *,
        cursor: str | None = None,
        limit: int = 50,
        now: datetime | None = None,
        include_deleted: bool = False,
    ) -> Page:
        """A page of memories of ``scope`` in id order; pass ``next_cursor`` back for the next page."""
        flt = self._filter(FilterSpec(scope, now=now, include_deleted=include_deleted))
        memories, next_cursor = await self._scroll(flt, limit, cursor)
        return Page(memories, next_cursor)

    async def count(self, scope: Owner, *, now: datetime | None = None, include_deleted: bool = False) -> int:
        """How many memories of ``scope`` (unexpired at ``now`` if given)."""
        return await self._count(self._filter(FilterSpec(scope, now=now, include_deleted=include_deleted)))

    async def find_expired(self, now: datetime, *, limit: int = 256) -> list[Memory]:
        """Memories of any tenant expired at ``now`` (the janitor's read; the delete is scoped)."""
        memories, _ = await self._scroll(build_expired_filter(now, self.dialect), limit)
        return memories
