"""The vector store interface, and what both backends share: scopes, filters, sealed payloads.

Isolation is built in, not left to callers: every store operation but the janitor's
:meth:`MemoryStore.find_expired` / :meth:`MemoryStore.delete_expired` takes a :class:`Owner` (tenant
AND subject, both non-empty, checked at construction), and every filter a backend sends is built by
:func:`build_filter`, which always starts with ``tenant == scope.tenant AND subject == scope.hash``.
A backend translates a filter through a small :class:`FilterDialect`, so the filter logic itself
exists once. Likewise the store operations themselves live once, in :class:`MemoryStore`; a backend
supplies only its dialect and a few primitives that speak its API.

Nothing a user said reaches the backend in clear: a store seals every payload through its
:class:`~proxy.memory.sealing.Sealer` (:func:`memory_to_payload`). The payload's ``subject`` is the
owner's pseudonym, its ``content_hash`` is keyed with the owner's data key, and the free-form fields
(:data:`SEALED_FIELDS`) are one ciphertext; only what filters and ranking need stays clear.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from proxy.errors import MemproxyError
from proxy.owner import Owner

from .models import Memory, as_utc, has_expired, last_touched
from .sealing import DataKey, Sealer, SealError, sealed_kid

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"

#: Reciprocal-rank-fusion constant; Qdrant's own default, so both backends fuse the same way.
RRF_K = 2

#: How many points past the cut each candidate list fetches: enough to see the points tied with the
#: last one kept (see :func:`cut_ties`).
CUT_MARGIN = 16

#: Payload fields with an index, and the index type. ``tenant`` is a tenant index on a server.
INDEXED_FIELDS: dict[str, str] = {
    "tenant": "keyword",
    "subject": "keyword",
    "expires_at": "datetime",
    "state": "keyword",
    "assistant_id": "keyword",
    "content_hash": "keyword",
    "kind": "keyword",  # pinned kinds are read on every recall
}

STATE_ACTIVE = "active"
STATE_DELETED = "deleted"

#: The payload field holding the sealed fields, one AES-256-GCM token (see :mod:`proxy.memory.sealing`).
SEALED = "sealed"
#: What a user said or an application attached: sealed, never in clear on disk.
SEALED_FIELDS = frozenset({"text", "history", "metadata", "source", "deleted_reason"})
_DATE_FIELDS = ("created_at", "updated_at", "expires_at", "last_accessed_at", "deleted_at")


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


@dataclass(frozen=True, slots=True)
class Nearest:
    """One vector query of a candidate search: ``using`` (:data:`DENSE` or :data:`SPARSE`) and its vector."""

    using: str
    vector: Sequence[float] | SparseVec


@dataclass(frozen=True, slots=True)
class Scored:
    """A point id and its score in one candidate list (no payload)."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class Probe:
    """One request of :meth:`MemoryStore._nearest`: the ``limit`` points matching ``flt`` nearest to ``query``."""

    flt: Any
    query: Nearest
    limit: int


def cut_ties(points: Sequence[Scored], limit: int, fetched: int) -> list[Scored]:
    """The first ``limit`` of a candidate list the backend returned (at most ``fetched`` long), equal
    scores ordered by id.

    A backend orders equal scores by its internal point order, which differs between runs and replicas,
    so its own cut at ``limit`` can keep either of two tied points. Here the list is fetched past the
    cut: the tied points there are ordered by id; and when they may run past what was fetched (the list
    is full and ends on the cut's score), none of them is kept, since which ones came back was the
    backend's choice. Deterministic for an exact search; no more than ``limit`` points.
    """
    ordered = sorted(points, key=lambda p: (-p.score, p.id))
    if len(ordered) <= limit:
        return ordered
    edge = ordered[limit - 1].score
    if len(ordered) >= fetched and ordered[-1].score == edge:
        return [p for p in ordered[:limit] if p.score > edge]
    return ordered[:limit]


def rrf_fuse(lists: Sequence[Sequence[Scored]], limit: int, *, k: int = RRF_K) -> list[Scored]:
    """Reciprocal rank fusion of candidate lists (each best first), the first ``limit``: a point scores
    the sum of ``1 / (k + rank)`` over the lists holding it (rank from 1), equal sums ordered by id."""
    fused: dict[str, float] = {}
    for ranking in lists:
        for rank, p in enumerate(ranking, start=1):
            fused[p.id] = fused.get(p.id, 0.0) + 1.0 / (k + rank)
    return sorted((Scored(i, s) for i, s in fused.items()), key=lambda p: (-p.score, p.id))[:limit]


@dataclass(slots=True)
class Hit:
    """A memory returned by a vector query: ``score`` is the backend's (cosine for a dense query, RRF for
    hybrid)."""

    memory: Memory
    score: float


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
    kinds: tuple[str, ...] | None = None  # only memories of these kinds

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
    """The one place a memory filter is built. It always begins with tenant AND the owner's pseudonym."""
    scope = require_scope(spec.scope)
    must: list[Any] = [d.match("tenant", scope.tenant), d.match("subject", scope.hash)]
    must_not: list[Any] = []
    if spec.ids is not None:
        must.append(d.has_ids(list(spec.ids)))
    if spec.content_hash is not None:
        must.append(d.match("content_hash", spec.content_hash))
    if spec.kinds is not None:
        must.append(d.combine([], [d.match("kind", kind) for kind in spec.kinds], []))
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


def build_pseudonym_filter(
    d: FilterDialect[C, F], tenant: str, owner_hash: str, ids: Sequence[str], *, expired_at: datetime | None = None
) -> F:
    """Memories among ``ids`` of one owner known by pseudonym only (the janitor has no subject to build
    an :class:`Owner` from), only those expired at ``expired_at`` if given."""
    must: list[Any] = [d.match("tenant", tenant), d.match("subject", owner_hash), d.has_ids(list(ids))]
    if expired_at is not None:
        must.append(d.expired("expires_at", as_utc(expired_at)))
    return d.combine(must, [], [])


def build_tenant_filter(d: FilterDialect[C, F], tenant: str | None) -> F:
    """Every point of ``tenant`` (of every tenant when None), whoever owns it: only an operator's census
    reads with it, and it reads clear fields only (:meth:`MemoryStore.scan_clear`)."""
    return d.combine([d.match("tenant", tenant)] if tenant is not None else [], [], [])


def build_legacy_filter(
    d: FilterDialect[C, F], *, tenant: str | None = None, subject: str | None = None, ids: Sequence[str] | None = None
) -> F:
    """Points written before sealing (no ``sealed`` field, raw subject): every one, or one owner's among ``ids``."""
    must: list[Any] = [d.is_empty(SEALED)]
    if tenant is not None and subject is not None and ids is not None:
        must += [d.match("tenant", tenant), d.match("subject", subject), d.has_ids(list(ids))]
    return d.combine(must, [], [])


# --- payload conversion ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def memory_to_payload(memory: Memory, scope: Owner, key: DataKey) -> dict[str, Any]:
    """The JSON payload of a point: :data:`SEALED_FIELDS` sealed under ``key`` (bound to the point),
    the owner's pseudonym as ``subject``, a keyed ``content_hash``; dates as RFC 3339 UTC strings
    (Qdrant's datetime index reads them)."""
    sealed = memory.model_dump(mode="json", include=set(SEALED_FIELDS))
    payload: dict[str, Any] = {
        "tenant": memory.tenant,
        "subject": scope.hash,
        "kind": memory.kind,
        "access_count": memory.access_count,
        "assistant_id": memory.assistant_id,
        "state": STATE_DELETED if memory.deleted else STATE_ACTIVE,
        "content_hash": key.content_hash(memory.text),
        SEALED: key.seal(sealed, Sealer.payload_aad(scope.tenant, scope.hash, memory.id)),
    }
    for name in _DATE_FIELDS:
        payload[name] = _iso(getattr(memory, name))
    return payload


_MEMORY_FIELDS = frozenset(Memory.model_fields)
"""Read once: pydantic builds ``Model.model_fields`` anew on each access (17 reads a memory, 40 memories a recall)."""


def payload_to_memory(
    point_id: object, payload: dict[str, Any] | None, scope: Owner | None = None, key: DataKey | None = None
) -> Memory:
    """Read a point of ``scope`` back: sealed fields opened with ``key``, ``subject`` from the owner.

    A payload written before sealing (clear fields, raw subject) reads as it is. Unknown payload keys
    (``state``, ``content_hash``, or a newer version's fields) are ignored.
    """
    payload = dict(payload or {})
    token = payload.pop(SEALED, None)
    if token is not None:
        if key is None or scope is None:
            raise SealError("the owner's data key is gone")
        payload |= key.open(token, Sealer.payload_aad(scope.tenant, scope.hash, str(point_id)))
        payload["subject"] = scope.subject
    data = {k: v for k, v in payload.items() if k in _MEMORY_FIELDS}
    return Memory.model_validate({**data, "id": str(point_id)})


def access_payload(access_count: int, last_accessed_at: datetime) -> dict[str, Any]:
    return {"access_count": access_count, "last_accessed_at": _iso(last_accessed_at)}


def expiry_payload(expires_at: datetime | None) -> dict[str, Any]:
    return {"expires_at": _iso(expires_at)}


# --- the interface -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """What a backend writes: the point id, its vectors and its (sealed) payload."""

    id: str
    dense: Sequence[float]
    sparse: SparseVec
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExpiredRef:
    """An expired memory as the janitor sees it: no text, no subject, only the owner's pseudonym."""

    id: str
    tenant: str
    owner_hash: str


@dataclass(frozen=True, slots=True)
class ClearPoint:
    """A memory as an operator's census sees it: the clear payload fields only. No text, no history, no
    metadata (sealed), and its owner by pseudonym only (the subject id is stored nowhere)."""

    id: str
    tenant: str
    owner_hash: str
    kind: str
    deleted: bool
    access_count: int
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None
    last_accessed_at: datetime | None = None

    @property
    def last_touched_at(self) -> datetime | None:
        """The later of the last change and the last recall (:attr:`Memory.last_touched_at`)."""
        return last_touched(self.updated_at, self.last_accessed_at)

    def is_expired(self, now: datetime) -> bool:
        return has_expired(self.expires_at, now)


def _clear_date(value: object) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def clear_point(point_id: object, payload: dict[str, Any] | None) -> ClearPoint:
    """The clear fields of a stored point (whatever it holds sealed is left alone)."""
    p = payload or {}
    count = p.get("access_count")
    return ClearPoint(
        id=str(point_id),
        tenant=str(p.get("tenant", "")),
        owner_hash=str(p.get("subject", "")),
        kind=str(p.get("kind", "")),
        deleted=p.get("state") == STATE_DELETED,
        access_count=count if isinstance(count, int) else 0,
        created_at=_clear_date(p.get("created_at")),
        updated_at=_clear_date(p.get("updated_at")),
        expires_at=_clear_date(p.get("expires_at")),
        last_accessed_at=_clear_date(p.get("last_accessed_at")),
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A point a search found, not opened: its clear fields, its score in the search, the cosine of its
    stored dense vector with the query's (the backend's own, None if unknown), ``terms`` (its stored BM25
    document weights by term, if asked for) and its sealed payload. Recall ranks candidates on these and
    opens only those it returns (:meth:`MemoryStore.open`): decrypting and validating a memory costs
    more than scoring it, and a stored dense vector costs more to read than its cosine."""

    point: ClearPoint
    score: float
    cosine: float | None = None
    terms: dict[int, float] | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return self.point.id


def _sparse_terms(vector: object) -> dict[int, float]:
    """A stored sparse vector (either backend's type) as weights by term; none stored reads as none."""
    indices, values = getattr(vector, "indices", None), getattr(vector, "values", None)
    if indices is None or values is None:
        return {}
    return dict(zip(indices, values, strict=True))


@dataclass(frozen=True, slots=True)
class Search:
    """One candidate search within ``spec``: its vector queries (fused with :func:`rrf_fuse` when several),
    the first ``limit`` kept; ``terms`` reads each candidate's stored BM25 weights."""

    spec: FilterSpec
    queries: tuple[Nearest, ...]
    limit: int
    terms: bool = False


class SearchPlan:
    """Several candidate searches as a backend runs them: the choosing is here, once for both backends;
    the backend only sends what is asked (:meth:`MemoryStore._run`) in as few calls as it can (Edge: all of
    it in one hop to its thread).

    1. :meth:`probes`: every query of every search, each fetched :data:`CUT_MARGIN` past its cut;
    2. :meth:`choose`: each search's lists cut on stable keys (:func:`cut_ties`) and fused; returns the
       probes that give the cosine of the chosen points no dense list scored (a BM25-only candidate);
    3. :meth:`scored`: their cosines; then the chosen points are read (:meth:`reads`, :attr:`ids`);
    4. :meth:`candidates`: each search's candidates, best first (equal scores by id).
    """

    def __init__(self, searches: Sequence[Search], to_filter: Callable[[FilterSpec], Any], dialect: Any) -> None:
        self.searches = list(searches)
        self.filters = [to_filter(s.spec) for s in self.searches]
        self.dialect = dialect
        self.chosen: list[list[Scored]] = []
        self.cosines: list[dict[str, float]] = []  # per search: point id -> cosine with its dense query
        self._extra: list[int] = []  # the search each extra probe gives cosines for
        self.vectors: tuple[str, ...] = (SPARSE,) if any(s.terms for s in self.searches) else ()

    def probes(self) -> list[Probe]:
        return [
            Probe(flt, query, search.limit + CUT_MARGIN)
            for search, flt in zip(self.searches, self.filters, strict=True)
            for query in search.queries
        ]

    def choose(self, found: list[list[Scored]]) -> list[Probe]:
        lists = iter(found)
        extra = []
        for i, (search, flt) in enumerate(zip(self.searches, self.filters, strict=True)):
            fetched = [next(lists) for _ in search.queries]
            cosines = {
                p.id: p.score
                for query, points in zip(search.queries, fetched, strict=True)
                if query.using == DENSE
                for p in points
            }
            cut = [cut_ties(points, search.limit, search.limit + CUT_MARGIN) for points in fetched]
            chosen = cut[0] if len(cut) == 1 else rrf_fuse(cut, search.limit)
            self.chosen.append(chosen)
            self.cosines.append(cosines)
            dense = next((q for q in search.queries if q.using == DENSE), None)
            unknown = [c.id for c in chosen if c.id not in cosines]
            if dense is not None and unknown:
                extra.append(Probe(self._within(flt, unknown), dense, len(unknown)))
                self._extra.append(i)
        return extra

    def scored(self, found: list[list[Scored]]) -> None:
        for i, points in zip(self._extra, found, strict=True):
            self.cosines[i].update((p.id, p.score) for p in points)

    @property
    def ids(self) -> list[str]:
        """Every chosen point, once."""
        return list(dict.fromkeys(c.id for chosen in self.chosen for c in chosen))

    def reads(self) -> list[tuple[Any, int]]:
        """Each search's chosen points as a filter within the search's own, and how many."""
        return [
            (self._within(flt, [c.id for c in chosen]), len(chosen))
            for flt, chosen in zip(self.filters, self.chosen, strict=True)
            if chosen
        ]

    def _within(self, flt: Any, ids: list[str]) -> Any:
        """``flt`` narrowed to the points ``ids``."""
        return self.dialect.combine([flt, self.dialect.has_ids(ids)], [], [])

    def candidates(self, records: Iterable[Any]) -> list[list[Candidate]]:
        read: dict[str, tuple[ClearPoint, dict[int, float], dict[str, Any]]] = {}
        for r in records:
            payload = r.payload or {}
            point = clear_point(r.id, payload)
            stored = r.vector if self.vectors else None  # built anew on each access: read once
            terms = _sparse_terms(stored.get(SPARSE)) if isinstance(stored, dict) else {}
            read[point.id] = (point, terms, payload)
        out = []
        for search, chosen, cosines in zip(self.searches, self.chosen, self.cosines, strict=True):
            found = []
            for c in chosen:
                if c.id in read:
                    point, terms, payload = read[c.id]
                    found.append(Candidate(point, c.score, cosines.get(c.id), terms if search.terms else None, payload))
            out.append(sorted(found, key=lambda c: (-c.score, c.id)))
        return out


@dataclass(slots=True)
class Page:
    memories: list[Memory] = field(default_factory=list)
    next_cursor: str | None = None


def check_owned(scope: Owner, memories: Iterable[Memory]) -> None:
    """Refuse to write a memory outside ``scope``."""
    scope = require_scope(scope)
    for memory in memories:
        if memory.tenant != scope.tenant or memory.subject != scope.subject:
            raise ValueError(f"memory {memory.id} belongs to another scope than the one written to")


def check_points(scope: Owner, points: Iterable[MemoryPoint], dim: int) -> list[MemoryPoint]:
    """Refuse to write a memory outside ``scope`` or with a wrongly sized vector."""
    checked = list(points)
    check_owned(scope, (point.memory for point in checked))
    for point in checked:
        if len(point.dense) != dim:
            raise ValueError(f"dense vector of size {len(point.dense)} written to a collection of size {dim}")
    return checked


# --- what both backends share ------------------------------------------------------------------------


class MemoryStore(ABC):
    """The vector store of memories, declared once: its operations, written once for both Qdrant backends.

    Every operation but the janitor's is confined to one :class:`~proxy.owner.Owner`, and every payload
    goes through :attr:`sealer` on its way in and out.

    Each operation builds its filter here (always through :func:`build_filter`, so always scoped) and
    hands it to a primitive: a subclass sets ``dialect`` and implements the ``_``-prefixed abstract
    methods in its own API, and nothing else about reading or writing memories.
    """

    collection: str
    dim: int
    paused: bool = False
    """True while the store is closed for maintenance (the embedded store's optimize): its calls wait until
    it reopens, so a recall, which cannot wait that long, goes on without memory at once."""
    #: Seals every payload written and opens every payload read (per-owner data keys).
    sealer: Sealer
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
    async def _upsert(self, points: list[StoredPoint]) -> None:
        """Write points already checked against the scope and sealed (never empty)."""

    @abstractmethod
    async def _set_payloads(self, updates: list[tuple[Any, dict[str, Any]]]) -> None:
        """Merge each ``fields`` into the points matching its filter, in order (never empty)."""

    @abstractmethod
    async def _overwrite_payloads(self, updates: list[tuple[Any, dict[str, Any]]]) -> None:
        """Replace the whole payload of the points matching each filter, in order (never empty)."""

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
    async def _scroll_records(
        self, flt: Any, limit: int, cursor: str | None, *, vectors: tuple[str, ...] = ()
    ) -> tuple[list[Any], Any]:
        """Up to ``limit`` records (with payloads, and the named ``vectors``) matching ``flt`` in id order
        from ``cursor``, and the backend's next offset (None at the end)."""

    @abstractmethod
    async def _nearest(self, probes: Sequence[Probe]) -> list[list[Scored]]:
        """For each probe, the ``limit`` points matching its filter nearest to its vector, best first (ids
        and scores, no payloads), in one call to the backend."""

    async def _run(self, plan: SearchPlan) -> list[Any]:
        """The backend's part of ``plan``: its probes, the cosines it asks for, then the chosen points read
        (payloads, and the plan's vectors). A backend may do it all in one call (Edge: one hop to its thread)."""
        extra = plan.choose(await self._nearest(plan.probes()))
        if extra:
            plan.scored(await self._nearest(extra))
        records: list[Any] = []
        for flt, n in plan.reads():
            records += (await self._scroll_records(flt, n, None, vectors=plan.vectors))[0]
        return records

    # --- sealing -----------------------------------------------------------------------------------

    async def _seal(self, scope: Owner, memories: Sequence[Memory]) -> list[dict[str, Any]]:
        """The sealed payloads of ``memories`` (all of ``scope``); creates the owner's key on first write."""
        key = await self.sealer.key(scope, create=True)
        assert key is not None  # create=True always yields a key
        return [memory_to_payload(m, scope, key) for m in memories]

    async def _unseal(
        self, scope: Owner, records: Sequence[tuple[object, dict[str, Any] | None]]
    ) -> list[Memory | None]:
        """Read payloads of ``scope`` back; a payload whose key is gone or that fails to authenticate is
        None (logged by id only): after erasure, a point that outlived it reads as nothing."""
        keys: dict[str, DataKey | None] = {}
        out: list[Memory | None] = []
        for point_id, payload in records:
            token = (payload or {}).get(SEALED)
            key = None
            if isinstance(token, str):
                try:
                    kid = sealed_kid(token)
                    if kid not in keys:
                        keys[kid] = await self.sealer.key(scope, kid=kid)
                    key = keys[kid]
                except SealError:
                    key = None
            try:
                out.append(payload_to_memory(point_id, payload, scope, key))
            except SealError as exc:
                log.warning("memory %s cannot be opened and is skipped: %s", point_id, exc)
                out.append(None)
        return out

    async def _memories(self, scope: Owner, records: Sequence[Any]) -> list[Memory]:
        opened = await self._unseal(scope, [(r.id, r.payload) for r in records])
        return [m for m in opened if m is not None]

    # --- writes ------------------------------------------------------------------------------------

    async def upsert(self, scope: Owner, points: Sequence[MemoryPoint]) -> None:
        """Insert or replace memories; every point must belong to ``scope``."""
        checked = check_points(scope, points, self.dim)
        if checked:
            payloads = await self._seal(scope, [p.memory for p in checked])
            await self._upsert(
                [
                    StoredPoint(p.memory.id, p.dense, p.sparse, payload)
                    for p, payload in zip(checked, payloads, strict=True)
                ]
            )

    async def set_payloads(self, scope: Owner, updates: dict[str, dict[str, Any]]) -> None:
        """Merge clear payload fields (access, expiry) into the given memories (id -> fields), if they
        exist in ``scope``. A sealed field cannot be set this way: use :meth:`rewrite`."""
        require_scope(scope)
        for fields in updates.values():
            refused = set(fields) & (SEALED_FIELDS | {SEALED, "tenant", "subject", "content_hash"})
            if refused:
                raise ValueError(f"set_payloads cannot set {sorted(refused)}: rewrite() seals them")
        ops = [
            (self._filter(FilterSpec(scope, include_deleted=True, ids=(mid,))), fields)
            for mid, fields in updates.items()
        ]
        if ops:
            await self._set_payloads(ops)

    async def rewrite(self, scope: Owner, memories: Sequence[Memory]) -> None:
        """Store these memories' payloads anew, sealed (vectors kept): a tombstone's reason, for one."""
        check_owned(scope, memories)
        if not memories:
            return
        payloads = await self._seal(scope, memories)
        ops = [
            (self._filter(FilterSpec(scope, include_deleted=True, ids=(m.id,))), payload)
            for m, payload in zip(memories, payloads, strict=True)
        ]
        await self._overwrite_payloads(ops)

    async def delete(self, scope: Owner, ids: Sequence[str]) -> None:
        """Hard-delete memories of ``scope`` among ``ids``."""
        require_scope(scope)
        if not ids:
            return
        await self._delete(self._filter(FilterSpec(scope, include_deleted=True, ids=tuple(ids))))

    async def delete_scope(self, scope: Owner) -> int:
        """Hard-delete every memory of ``scope``, tombstones included, then destroy the owner's data key
        (whatever copy of a payload the backend's files keep can no longer be opened); return how many
        memories there were."""
        erased = await self._erase(self._filter(FilterSpec(scope, include_deleted=True)))
        await self.sealer.destroy(scope)
        return erased

    # --- reads -------------------------------------------------------------------------------------

    async def _scroll(
        self, scope: Owner, flt: Any, limit: int, cursor: str | None = None
    ) -> tuple[list[Memory], str | None]:
        records, next_offset = await self._scroll_records(flt, limit, cursor)
        return await self._memories(scope, records), (str(next_offset) if next_offset is not None else None)

    async def _candidates(self, searches: Sequence[Search]) -> list[list[Candidate]]:
        """The candidates of each search (see :class:`SearchPlan`): identical data gives identical
        candidates whatever order the backend holds them in; read by id within each search's filter,
        best first (equal scores by id), nothing opened."""
        plan = SearchPlan(searches, self._filter, self.dialect)
        return plan.candidates(await self._run(plan))

    async def open(self, scope: Owner, candidates: Sequence[Candidate]) -> list[Hit]:
        """``candidates`` of ``scope`` opened, in their order; one that cannot be opened (its key is gone,
        or it fails to authenticate) is left out (logged by id only)."""
        opened = await self._unseal(scope, [(c.id, c.payload) for c in candidates])
        return [Hit(m, c.score) for c, m in zip(candidates, opened, strict=True) if m is not None]

    async def recall_candidates(
        self,
        scope: Owner,
        dense: Sequence[float],
        sparse: SparseVec,
        *,
        limit: int,
        now: datetime,
        assistant_id: str | None = None,
        kinds: tuple[str, ...] = (),
        kinds_limit: int = 0,
    ) -> tuple[list[Candidate], list[Candidate]]:
        """What recall ranks, in one call to the backend: the hybrid candidates (dense and, if ``sparse``
        has terms, BM25 candidates, ``limit`` each, fused with RRF (k = :data:`RRF_K`), the first
        ``limit``; ``score`` is the fused one; each with its cosine and stored BM25 weights), then the
        ``kinds_limit`` nearest memories of ``kinds`` by cosine (none without kinds). Not deleted, not
        expired at ``now``, unopened; equal scores ordered by id at every cut (:func:`cut_ties`)."""
        queries = (Nearest(DENSE, dense),) + ((Nearest(SPARSE, sparse),) if sparse.indices else ())
        searches = [Search(FilterSpec(scope, now=now, assistant_id=assistant_id), queries, limit, terms=True)]
        if kinds and kinds_limit > 0:
            spec = FilterSpec(scope, now=now, assistant_id=assistant_id, kinds=kinds)
            searches.append(Search(spec, (Nearest(DENSE, dense),), kinds_limit))
        found = await self._candidates(searches)
        return found[0], found[1] if len(found) > 1 else []

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
        """The hybrid candidates of :meth:`recall_candidates`, opened."""
        found, _ = await self.recall_candidates(scope, dense, sparse, limit=limit, now=now, assistant_id=assistant_id)
        return await self.open(scope, found)

    async def dense_query(
        self,
        scope: Owner,
        dense: Sequence[float],
        *,
        limit: int,
        now: datetime,
        assistant_id: str | None = None,
        kinds: tuple[str, ...] | None = None,
    ) -> list[Hit]:
        """Nearest by cosine (``score`` is the cosine), not deleted, not expired at ``now``, of ``kinds`` if
        given; equal cosines ordered by id (:func:`cut_ties`)."""
        spec = FilterSpec(scope, now=now, assistant_id=assistant_id, kinds=kinds)
        (found,) = await self._candidates([Search(spec, (Nearest(DENSE, dense),), limit)])
        return await self.open(scope, found)

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
        memories, _ = await self._scroll(scope, flt, len(ids))
        return memories

    async def find(
        self,
        scope: Owner,
        *,
        text: str,
        now: datetime | None = None,
        assistant_id: str | None = None,
        limit: int = 1,
    ) -> list[Memory]:
        """Live (not deleted) memories of ``scope`` with the same normalized text (keyed content hash)."""
        key = await self.sealer.key(require_scope(scope))
        if key is None:  # an owner without a key has nothing sealed
            return []
        spec = FilterSpec(scope, now=now, assistant_id=assistant_id, content_hash=key.content_hash(text))
        memories, _ = await self._scroll(scope, self._filter(spec), limit)
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
        memories, next_cursor = await self._scroll(scope, flt, limit, cursor)
        return Page(memories, next_cursor)

    async def count(self, scope: Owner, *, now: datetime | None = None, include_deleted: bool = False) -> int:
        """How many memories of ``scope`` (unexpired at ``now`` if given)."""
        return await self._count(self._filter(FilterSpec(scope, now=now, include_deleted=include_deleted)))

    # --- the operator's census (unscoped by owner, clear fields only) ---------------------------

    async def scan_clear(
        self, tenant: str | None = None, *, limit: int = 256, cursor: str | None = None
    ) -> tuple[list[ClearPoint], str | None]:
        """A page of the clear fields of ``tenant``'s points (every tenant's when None), in id order, and
        the cursor of the next page. Nothing is opened: no key is read, no text leaves the store."""
        records, next_offset = await self._scroll_records(build_tenant_filter(self.dialect, tenant), limit, cursor)
        points = [clear_point(r.id, r.payload) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    # --- the janitor (unscoped) ------------------------------------------------------------------

    async def find_expired(self, now: datetime, *, limit: int = 256) -> list[ExpiredRef]:
        """Memories of any tenant expired at ``now``, by id and owner pseudonym only (nothing is opened)."""
        records, _ = await self._scroll_records(build_expired_filter(now, self.dialect), limit, None)
        return [
            ExpiredRef(str(r.id), str((r.payload or {}).get("tenant", "")), str((r.payload or {}).get("subject", "")))
            for r in records
        ]

    async def delete_expired(self, tenant: str, owner_hash: str, ids: Sequence[str], now: datetime) -> list[str]:
        """Hard-delete the memories of one pseudonymous owner among ``ids`` still expired at ``now``;
        return the ids really removed (one extended meanwhile stays, and is not reported)."""
        if not ids:
            return []
        expired = build_pseudonym_filter(self.dialect, tenant, owner_hash, ids, expired_at=now)
        matched, _ = await self._scroll_records(expired, len(ids), None)
        await self._delete(expired)
        mine = [str(r.id) for r in matched]
        if not mine:
            return []
        left, _ = await self._scroll_records(
            build_pseudonym_filter(self.dialect, tenant, owner_hash, mine), len(ids), None
        )
        kept = {str(r.id) for r in left}
        return [i for i in mine if i not in kept]

    # --- migration -------------------------------------------------------------------------------

    async def seal_legacy(self, owner_of: Callable[[str, str], Owner], *, batch: int = 256) -> int:
        """Seal every point written before sealing existed (clear text, raw subject), in place.

        Each one's payload is replaced by its sealed form under its owner's key, with the owner's
        pseudonym as ``subject``; vectors are kept. Returns how many points were sealed. Idempotent:
        a sealed point never matches again. Run at start-up, before the store serves.
        """
        sealed, seen = 0, set[str]()
        while True:
            records, _ = await self._scroll_records(build_legacy_filter(self.dialect), batch, None)
            fresh = [r for r in records if str(r.id) not in seen]
            if not fresh:
                if sealed:
                    log.info("sealed %d memories written before payloads were sealed", sealed)
                return sealed
            seen.update(str(r.id) for r in fresh)
            by_owner: dict[Owner, list[Memory]] = {}
            for record in fresh:
                try:
                    memory = payload_to_memory(record.id, record.payload)
                except ValueError as exc:  # not a memory this version can read: left as it is, never served
                    log.warning("point %s is no readable memory and stays unsealed: %s", record.id, type(exc).__name__)
                    continue
                by_owner.setdefault(owner_of(memory.tenant, memory.subject), []).append(memory)
            for owner, memories in by_owner.items():
                payloads = await self._seal(owner, memories)
                ids = [m.id for m in memories]
                ops = [
                    (build_legacy_filter(self.dialect, tenant=owner.tenant, subject=owner.subject, ids=[m.id]), payload)
                    for m, payload in zip(memories, payloads, strict=True)
                ]
                await self._overwrite_payloads(ops)
                sealed += len(ids)
