"""The state store shared by proxy replicas: key/value with TTL, JSON records, and a job queue.

One small async interface, :class:`State`, with two backends: SQLite under the data directory (one
replica, durable, no server) and Redis (several replicas). Everything a backend would otherwise
duplicate lives here: JSON encoding, subject indexing and erasure, record pagination, the retry
policy. A backend implements only storage primitives (the ``_``-prefixed abstract methods).

Security: client API keys (``Authorization`` / ``api-key`` values) are never written to the state
store. Jobs carry no credentials: a worker calls the upstream with the operator's own key, and
:meth:`State.enqueue` refuses payloads that contain credential-named fields. Subjects (end-user ids,
possibly e-mail addresses) appear in keys only as :attr:`proxy.owner.Owner.hash`, their keyed pseudonym.

Keys are ``(namespace, key)`` pairs; a key holds one kind of value (a JSON value, a list, or a set).
Callers put the tenant into the key (``f"{tenant}:{thread_id}"``) so tenants never share an entry.

Chained collections (the audit log) append through :meth:`State.append_chained`: reading the head,
writing the next record and moving the head is one atomic step on every backend, so concurrent
appends on any number of replicas never fork the chain. The head of each chain is kept apart from
its records (namespace :data:`CHAIN_HEAD_NS`), so deleting the newest records shows.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from proxy.errors import MemproxyError
from proxy.owner import Owner

if TYPE_CHECKING:
    from proxy.config import Settings

JSONValue = Any
"""Anything :func:`json.dumps` accepts."""

Clock = Callable[[], float]
"""Seconds since the epoch; injectable so tests move time instead of sleeping."""

SUBJECT_INDEX_NS = "_subject_index"
"""Namespace of the per-subject index sets: one set per subject listing every entry written about it."""

PING_NS = "_ping"
"""Namespace read (never written) by :meth:`State.ping`."""

CHAIN_HEAD_NS = "_chain_head"
"""Namespace of the chain heads: one JSON value ``{seq, hash}`` per chained (tenant, collection)."""

CHAIN_ATTEMPTS = 1000
"""Optimistic attempts of one chained append (Redis) before :class:`ChainConflict`; each lost attempt
means another append won, so this bounds starvation, not progress."""

MAX_ERROR_CHARS = 2000
CREDENTIAL_FIELDS = frozenset({"authorization", "api_key", "api-key", "apikey", "openai_api_key", "x-api-key"})


class ManualClock:
    """A clock that moves only when told to: lease, backoff and TTL tests run without sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Job:
    """One unit of background work (e.g. extraction of a finished run).

    ``attempts`` counts deliveries, the current one included; together with ``id`` it identifies a
    lease, so a worker whose lease expired can no longer ack or fail the job it lost.
    ``visible_at`` is when the job can next be claimed: the lease deadline while claimed, the retry
    time after a failure. ``receipt`` is the backend's delivery handle (a stream entry id in Redis).
    """

    id: str
    kind: str
    payload: dict[str, Any]
    attempts: int = 0
    idempotency_key: str | None = None
    tenant: str | None = None
    subject_hash: str | None = None
    visible_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    receipt: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Job:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class JobPolicy:
    """Retry and retention policy of the job queue, shared by both backends."""

    max_attempts: int = 5
    backoff_base: float = 2.0
    backoff_cap: float = 300.0
    lease_seconds: float = 60.0
    idempotency_retention: float = 86_400.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JobPolicy:
        return cls(
            max_attempts=settings.job_max_attempts,
            backoff_base=settings.job_backoff_base,
            backoff_cap=settings.job_backoff_cap,
            lease_seconds=settings.job_lease_seconds,
            idempotency_retention=settings.job_idempotency_retention,
        )

    def backoff(self, attempts: int) -> float:
        """Delay before the next delivery after ``attempts`` failed ones: exponential, capped."""
        delay: float = self.backoff_base * 2.0 ** max(0, attempts - 1)
        return min(self.backoff_cap, delay)


@dataclass
class RecordPage:
    """One page of records in list order; ``has_more`` says whether the scan direction continues."""

    items: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False


@dataclass(frozen=True)
class Erased:
    """What :meth:`State.forget_subject` removed, for the erasure audit trail."""

    entries: int
    jobs: int


class UnknownCursor(MemproxyError, LookupError):
    """``after`` / ``before`` names a record that does not exist (the API answers 400/404)."""


class ChainConflict(MemproxyError):
    """A chained append lost its optimistic race :data:`CHAIN_ATTEMPTS` times in a row."""


@dataclass(frozen=True)
class ChainHead:
    """The newest record of a chained collection: its sequence number and hash.

    A chained record carries ``id``, ``seq`` (1, 2, 3, ...) and ``hash``; a record without ``seq``
    (written before its collection was chained) stands at seq 0.
    """

    seq: int
    hash: str

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> ChainHead:
        return cls(int(record.get("seq", 0)), str(record["hash"]))

    @classmethod
    def decode(cls, raw: str) -> ChainHead:
        return cls.of(json.loads(raw))

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}

    def encode(self) -> str:
        return encode(self.as_json())

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


MakeLink = Callable[[ChainHead | None], dict[str, Any]]
"""Builds the next record of a chain from its head (None: an empty collection); see :meth:`State.append_chained`."""


def chain_head_key(tenant: str, collection: str) -> str:
    """The key of a chain's head in :data:`CHAIN_HEAD_NS` (collection names hold no ``:``)."""
    if ":" in collection:
        raise ValueError(f"a chained collection's name holds no ':' ({collection!r})")
    return f"{tenant}:{collection}"


def implied_head(newest: Sequence[str]) -> ChainHead | None:
    """The head a chain without a stored head continues from: its newest raw record's, if any.

    Only a log written before heads were kept (or one whose head was deleted) has none.
    """
    return ChainHead.decode(newest[0]) if newest else None


JobMatch = Owner | Callable[[Job], bool]


def job_matcher(match: JobMatch) -> Callable[[Job], bool]:
    """Turn an owner into a predicate on jobs (its pseudonym, or wave 1's unkeyed hash); predicates pass."""
    if isinstance(match, Owner):
        hashes = {match.hash, match.legacy_hash}
        return lambda job: job.subject_hash in hashes
    return match


def encode(value: JSONValue) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode(raw: str | None) -> JSONValue:
    return None if raw is None else json.loads(raw)


def check_ttl(ttl: float | None) -> None:
    if ttl is not None and ttl <= 0:
        raise ValueError(f"ttl must be positive seconds or None, got {ttl!r}")


def redis_slice(items: Sequence[str], start: int, stop: int) -> list[str]:
    """Redis LRANGE semantics (inclusive ``stop``, negatives from the end) on a Python list."""
    n = len(items)
    start = max(0, start + n if start < 0 else start)
    stop = stop + n if stop < 0 else min(stop, n - 1)
    return list(items[start : stop + 1]) if start <= stop else []


def find_credentials(value: Any, path: str = "payload") -> str | None:
    """Path of the first credential-named field inside ``value``, or None."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if str(key).lower() in CREDENTIAL_FIELDS:
                return f"{path}.{key}"
            found = find_credentials(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_credentials(item, f"{path}[{index}]")
            if found:
                return found
    return None


ENQUEUE_BATCH = 256
"""Jobs written at most in one transaction / pipeline by :meth:`State.enqueue`'s coalescing."""


class State(abc.ABC):
    """What proxy replicas share. All methods are safe to call concurrently.

    Never store client API keys here (see the module docstring). Pass ``subject=`` when an entry is
    about a person: it is then indexed so :meth:`forget_subject` can find and remove it. Do not tag
    entries that several subjects share.
    """

    def __init__(self, *, clock: Clock | None = None, policy: JobPolicy | None = None) -> None:
        self.clock: Clock = clock or time.time
        self.policy = policy or JobPolicy()
        self.chain_appends: Counter[str] = Counter()
        """Records appended to each chained collection through this instance (a process metric)."""
        self._to_enqueue: list[tuple[Job, asyncio.Future[str]]] = []
        self._enqueuing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise unless the store answers now (readiness checks)."""
        await self._get(PING_NS, "ping")

    def tenant(self, tenant: str) -> TenantState:
        """The key/value part of the store as one tenant sees it (keys prefixed automatically)."""
        return TenantState(self, tenant)

    # --- key/value ---------------------------------------------------------------------------

    async def get(self, ns: str, key: str) -> JSONValue:
        """The JSON value stored at ``(ns, key)``, or None if absent or expired."""
        return decode(await self._get(ns, key))

    async def set(
        self, ns: str, key: str, value: JSONValue, *, ttl: float | None = None, subject: Owner | None = None
    ) -> None:
        """Store a JSON value, replacing the old value and its TTL (``ttl=None``: no expiry)."""
        check_ttl(ttl)
        raw = encode(value)
        await self._track(subject, "kv", ns, key)
        await self._set(ns, key, raw, ttl)

    async def set_new(self, ns: str, key: str, value: JSONValue) -> bool:
        """Store a JSON value only if ``(ns, key)`` holds nothing (atomic, no expiry); True if stored.

        Two writers racing to create the same entry (two replicas, two tasks) agree on one value.
        """
        return await self._set_new(ns, key, encode(value))

    @abc.abstractmethod
    async def delete(self, ns: str, key: str) -> bool:
        """Remove the key whatever it holds; True if it existed."""

    @abc.abstractmethod
    async def expire(self, ns: str, key: str, ttl: float | None) -> bool:
        """Set (or with None, clear) the TTL of an existing key; False if there is no such key."""

    async def list_push(
        self,
        ns: str,
        key: str,
        *values: JSONValue,
        max_len: int | None = None,
        ttl: float | None = None,
        subject: Owner | None = None,
    ) -> int:
        """Append values, keep only the newest ``max_len``; returns the resulting length.

        ``ttl`` given: the whole list expires ttl seconds from now; None keeps the current expiry.
        """
        check_ttl(ttl)
        if not values:
            raise ValueError("list_push needs at least one value")
        if max_len is not None and max_len < 1:
            raise ValueError("max_len must be at least 1")
        raws = [encode(v) for v in values]
        await self._track(subject, "kv", ns, key)
        return await self._list_push(ns, key, raws, max_len, ttl)

    async def list_range(self, ns: str, key: str, start: int = 0, stop: int = -1) -> list[JSONValue]:
        """Items oldest first, Redis LRANGE indices (``stop`` inclusive, -1 is the last)."""
        return [decode(raw) for raw in await self._list_range(ns, key, start, stop)]

    async def set_add(
        self, ns: str, key: str, *members: str, ttl: float | None = None, subject: Owner | None = None
    ) -> int:
        """Add string members; returns how many were new. ``ttl`` as in :meth:`list_push`."""
        check_ttl(ttl)
        if not members:
            return 0
        await self._track(subject, "kv", ns, key)
        return await self._set_add(ns, key, list(members), ttl)

    async def set_remove(self, ns: str, key: str, *members: str) -> int:
        """Remove members; returns how many were present. An emptied set disappears."""
        return await self._set_remove(ns, key, list(members)) if members else 0

    @abc.abstractmethod
    async def set_members(self, ns: str, key: str) -> builtins.set[str]: ...

    @abc.abstractmethod
    async def set_contains(self, ns: str, key: str, member: str) -> bool: ...

    # --- records (assistants and runs of the Assistants bridge) ------------------------------

    async def put_record(
        self, tenant: str, collection: str, id: str, record: dict[str, Any], *, subject: Owner | None = None
    ) -> None:
        """Create or replace a record; a replaced record keeps its place in creation order."""
        raw = encode(record)
        await self._track(subject, "rec", tenant, collection, id)
        await self._put_record(tenant, collection, id, raw)

    async def get_record(self, tenant: str, collection: str, id: str) -> dict[str, Any] | None:
        """The record, or None; another tenant's record with the same id is never returned."""
        found = decode(await self._get_record(tenant, collection, id))
        return found if isinstance(found, dict) else None

    @abc.abstractmethod
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
    ) -> RecordPage:
        """A page in creation order, with OpenAI list semantics.

        ``after=X``: the records following X in ``order``; ``before=X``: the page just preceding X,
        still in ``order``. ``has_more`` tells whether more records lie beyond the page in the
        direction scanned. Raises :class:`UnknownCursor` if X does not exist.
        """
        if after is not None and before is not None:
            raise ValueError("pass at most one of after and before")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        ascending = order == "asc"
        if before is not None:
            ascending = not ascending
        raws = await self._scan_records(tenant, collection, ascending, after or before, limit + 1)
        items = [json.loads(raw) for raw in raws[:limit]]
        if before is not None:
            items.reverse()
        return RecordPage(items=items, has_more=len(raws) > limit)

    # --- chained collections (the audit log) ----------------------------------------------------

    async def append_chained(self, tenant: str, collection: str, make: MakeLink) -> dict[str, Any]:
        """Append the next record of a hash-chained collection, atomically across replicas; return it.

        ``make(head)`` gets the chain's head and returns the next record, which carries ``id``,
        ``seq`` and ``hash`` (the new head). The head is the stored one; a chain without one (a log
        written before heads were kept) continues from its newest record, an empty one gets None.
        Reading the head, writing the record and storing the new head are one step: no two appends
        ever build on the same head. ``make`` must be pure and quick: it runs inside that step
        (SQLite: in the write transaction) or once per attempt of an optimistic loop (Redis), so
        perhaps more than once. Raises :class:`ChainConflict` if an append never gets its turn.
        """
        record = await self._append_chained(tenant, collection, make)
        self.chain_appends[collection] += 1
        return record

    async def chain_head(self, tenant: str, collection: str) -> ChainHead | None:
        """The stored head of a chain, or None if no chained append has stored one yet."""
        raw = await self._get(CHAIN_HEAD_NS, chain_head_key(tenant, collection))
        return None if raw is None else ChainHead.decode(raw)

    # --- job queue -----------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        subject: Owner | None = None,
    ) -> str:
        """Queue a job; returns its id.

        With an ``idempotency_key`` already used by a job that is pending, or done within
        ``policy.idempotency_retention``, no job is added and the existing job's id is returned.
        """
        found = find_credentials(payload)
        if found:
            raise ValueError(f"job payloads never carry credentials ({found})")
        now = self.clock()
        job = Job(
            id=uuid.uuid4().hex,
            kind=kind,
            payload=json.loads(encode(payload)),
            idempotency_key=idempotency_key,
            tenant=subject.tenant if subject else None,
            subject_hash=subject.hash if subject else None,
            visible_at=now,
            created_at=now,
        )
        return await self._coalesce(job)

    async def _coalesce(self, job: Job) -> str:
        """Queue ``job`` with whatever other jobs are being queued meanwhile, in one write.

        The first job starts a writer; jobs enqueued while its write is under way wait for the next one,
        which takes them all (:meth:`_enqueue_many`: one SQLite transaction, one Redis pipeline). Nobody
        waits for a batch to fill: alone, a job is written at once. Each caller returns only once its own
        job is stored, and sees the batch's failure if it failed.
        """
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._to_enqueue.append((job, done))
        if self._enqueuing is None:
            self._enqueuing = asyncio.ensure_future(self._write_enqueued())
        return await asyncio.shield(done)  # a caller that gives up does not cancel the others' write

    async def _write_enqueued(self) -> None:
        try:
            while self._to_enqueue:
                batch, self._to_enqueue = self._to_enqueue[:ENQUEUE_BATCH], self._to_enqueue[ENQUEUE_BATCH:]
                try:
                    ids = await self._enqueue_many([job for job, _ in batch])
                except BaseException as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("enqueue stopped"))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, done), job_id in zip(batch, ids, strict=True):
                    if not done.done():
                        done.set_result(job_id)
        finally:
            self._enqueuing = None
            left, self._to_enqueue = self._to_enqueue, []
            for _, done in left:  # only when the writer itself was stopped
                if not done.done():
                    done.set_exception(RuntimeError("enqueue stopped"))

    async def _enqueue_many(self, jobs: list[Job]) -> list[str]:
        """Store ``jobs`` (each as :meth:`_enqueue` would), in one write where the backend can."""
        return [await self._enqueue(job) for job in jobs]

    async def claim(self, consumer: str, count: int = 1, lease_seconds: float | None = None) -> list[Job]:
        """Lease up to ``count`` due jobs to ``consumer``; others cannot claim them until the lease ends.

        A job whose lease ends without :meth:`ack` or :meth:`fail` (a crashed worker) is delivered
        again, with ``attempts`` counting every delivery.
        """
        lease = self.policy.lease_seconds if lease_seconds is None else lease_seconds
        if lease <= 0 or count < 1:
            raise ValueError("lease_seconds must be positive and count at least 1")
        return await self._claim(consumer, count, lease)

    @abc.abstractmethod
    async def ack(self, job: Job) -> bool:
        """Mark done; call only once the job's effect is stored. False if the lease was lost."""

    async def fail(self, job: Job, error: str) -> bool:
        """Give the job back: retried after a backoff, dead-lettered after ``max_attempts``.

        False (and no effect) if the lease was lost to another consumer meanwhile.
        """
        error = error[:MAX_ERROR_CHARS]
        if job.attempts >= self.policy.max_attempts:
            return await self._bury(job, error)
        return await self._retry(job, error, self.clock() + self.policy.backoff(job.attempts))

    async def wait_for_key(self, job: Job) -> bool:
        """Give a claimed job back to wait for its tenant's API key: this delivery is not an attempt.

        The job is not due again until :meth:`release_waiting` names its tenant (a live request of the
        tenant brought its key to a worker), so a tenant that has not come back since a restart never
        burns its jobs' attempts. False (and no effect) if the lease was lost meanwhile.
        """
        return await self._park(job)

    async def release_waiting(self, tenant: str | None = None) -> int:
        """Make the jobs waiting for ``tenant``'s key (None: every tenant's) due now; how many."""
        return await self._release(tenant)

    @abc.abstractmethod
    async def waiting_count(self) -> int:
        """Jobs waiting for their tenant's API key (:meth:`wait_for_key`)."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[Job]:
        """Jobs that failed ``max_attempts`` times, oldest first, with their last error."""

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Queue depth: jobs due, leased, scheduled for a retry or waiting for a key (not done, not dead)."""

    async def drop_jobs(self, match: JobMatch) -> int:
        """Remove pending (key-waiting included) and dead-lettered jobs about a subject (or matching a predicate).

        A worker holding a dropped job will find its ack refused.
        """
        return await self._drop_jobs(job_matcher(match))

    # --- erasure -------------------------------------------------------------------------------

    async def forget_subject(self, owner: Owner) -> Erased:
        """Remove every entry and record written with ``subject=owner``, and the owner's jobs.

        Entries an earlier version indexed under the unkeyed :attr:`Owner.legacy_hash` go too.
        """
        removed = 0
        for index in (owner.hash, owner.legacy_hash):
            for ref in await self.set_members(SUBJECT_INDEX_NS, index):
                removed += await self._forget_ref(json.loads(ref))
            await self.delete(SUBJECT_INDEX_NS, index)
        return Erased(entries=removed, jobs=await self.drop_jobs(owner))

    async def compact(self) -> None:
        """Make what was deleted unreadable in the backend's own files, where the backend can.

        SQLite checkpoints and truncates its write-ahead log (deleted rows are already zeroed in the
        database file: ``secure_delete``); Redis does nothing (its persistence files belong to the
        operator). Erasure calls it last.
        """

    async def _forget_ref(self, ref: list[str]) -> int:
        kind, *parts = ref
        if kind == "kv":
            return int(await self.delete(*parts))
        return int(await self.delete_record(*parts))

    async def _track(self, subject: Owner | None, *ref: str) -> None:
        """Index an entry under its subject before writing it, so a crash never leaves it unfindable."""
        if subject is not None:
            await self._set_add(SUBJECT_INDEX_NS, subject.hash, [encode(list(ref))], None)

    # --- backend primitives ----------------------------------------------------------------------

    @abc.abstractmethod
    async def _get(self, ns: str, key: str) -> str | None: ...

    @abc.abstractmethod
    async def _set(self, ns: str, key: str, raw: str, ttl: float | None) -> None: ...

    @abc.abstractmethod
    async def _set_new(self, ns: str, key: str, raw: str) -> bool: ...

    @abc.abstractmethod
    async def _list_push(self, ns: str, key: str, raws: list[str], max_len: int | None, ttl: float | None) -> int: ...

    @abc.abstractmethod
    async def _list_range(self, ns: str, key: str, start: int, stop: int) -> list[str]: ...

    @abc.abstractmethod
    async def _set_add(self, ns: str, key: str, members: list[str], ttl: float | None) -> int: ...

    @abc.abstractmethod
    async def _set_remove(self, ns: str, key: str, members: list[str]) -> int: ...

    @abc.abstractmethod
    async def _put_record(self, tenant: str, collection: str, id: str, raw: str) -> None: ...

    @abc.abstractmethod
    async def _get_record(self, tenant: str, collection: str, id: str) -> str | None: ...

    @abc.abstractmethod
    async def _scan_records(
        self, tenant: str, collection: str, ascending: bool, cursor: str | None, limit: int
    ) -> list[str]:
        """Up to ``limit`` raw records strictly beyond ``cursor`` in creation order (or reversed)."""

    @abc.abstractmethod
    async def _append_chained(self, tenant: str, collection: str, make: MakeLink) -> dict[str, Any]:
        """Atomically: read the head (else :func:`implied_head`), ``make`` the record, store it and the
        new head (:meth:`ChainHead.of` the record) under :func:`chain_head_key` in :data:`CHAIN_HEAD_NS`."""

    @abc.abstractmethod
    async def _enqueue(self, job: Job) -> str: ...

    @abc.abstractmethod
    async def _claim(self, consumer: str, count: int, lease: float) -> list[Job]: ...

    @abc.abstractmethod
    async def _retry(self, job: Job, error: str, visible_at: float) -> bool: ...

    @abc.abstractmethod
    async def _bury(self, job: Job, error: str) -> bool: ...

    @abc.abstractmethod
    async def _park(self, job: Job) -> bool:
        """If the lease is held: take the job off the queue, count this delivery back, keep it waiting."""

    @abc.abstractmethod
    async def _release(self, tenant: str | None) -> int: ...

    @abc.abstractmethod
    async def _drop_jobs(self, predicate: Callable[[Job], bool]) -> int: ...


class TenantState:
    """One tenant's view of the key/value store: every key is stored as ``<tenant>:<key>``.

    Hooks and the ownership register use it so no call site spells a tenant prefix by hand, and an
    entry tagged with an owner of another tenant is refused.
    """

    def __init__(self, state: State, tenant: str) -> None:
        if not tenant:
            raise ValueError("a tenant-scoped state needs a tenant")
        self.state, self.name = state, tenant

    def _key(self, key: str) -> str:
        return f"{self.name}:{key}"

    def _owned(self, owner: Owner | None) -> Owner | None:
        if owner is not None and owner.tenant != self.name:
            raise ValueError("an entry of this tenant cannot be indexed under another tenant's owner")
        return owner

    async def get(self, ns: str, key: str) -> JSONValue:
        return await self.state.get(ns, self._key(key))

    async def set(
        self, ns: str, key: str, value: JSONValue, *, ttl: float | None = None, subject: Owner | None = None
    ) -> None:
        await self.state.set(ns, self._key(key), value, ttl=ttl, subject=self._owned(subject))

    async def delete(self, ns: str, key: str) -> bool:
        return await self.state.delete(ns, self._key(key))

    async def list_push(
        self,
        ns: str,
        key: str,
        *values: JSONValue,
        max_len: int | None = None,
        ttl: float | None = None,
        subject: Owner | None = None,
    ) -> int:
        return await self.state.list_push(
            ns, self._key(key), *values, max_len=max_len, ttl=ttl, subject=self._owned(subject)
        )

    async def list_range(self, ns: str, key: str, start: int = 0, stop: int = -1) -> list[JSONValue]:
        return await self.state.list_range(ns, self._key(key), start, stop)

    async def set_add(
        self, ns: str, key: str, *members: str, ttl: float | None = None, subject: Owner | None = None
    ) -> int:
        return await self.state.set_add(ns, self._key(key), *members, ttl=ttl, subject=self._owned(subject))

    async def set_members(self, ns: str, key: str) -> builtins.set[str]:
        return await self.state.set_members(ns, self._key(key))

    async def set_contains(self, ns: str, key: str, member: str) -> bool:
        return await self.state.set_contains(ns, self._key(key), member)
