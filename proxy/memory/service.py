"""MemoryService: the memory API the rest of memproxy uses (hooks, worker, REST API, CLI).

Every read and write goes through ``service.of(owner)``: an :class:`OwnerMemory` for one
:class:`~proxy.owner.Owner` (tenant and subject), which the store enforces on every operation. Timing-sensitive calls take ``now`` (default: the service's clock) so tests and
the janitor never depend on the wall clock.

Recall is read-only on the request path: access counts and times of the recalled memories are
collected in memory and written back by a background task (``flush()`` writes them immediately).
Counts are best effort: a crash loses the unflushed ones, and two replicas flushing the same memory
at once may lose an increment.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

from proxy.errors import MemproxyError
from proxy.owner import Owner
from proxy.tracing import traced

from .dates import DateCues, date_cues
from .embed import Embedder
from .models import (
    ConfidenceTerms,
    HistoryEntry,
    Memory,
    RememberAction,
    ScoredMemory,
    Source,
    as_utc,
    check_kind,
    utcnow,
)
from .redact import Redactor
from .rerank import Reranker
from .scoring import ScoringWeights, bm25_scores, confidence, fuse
from .sparse import Bm25Encoder, lexical_scores
from .store import (
    RRF_K,
    Candidate,
    ClearPoint,
    DimensionMismatchError,
    ExpiredRef,
    MemoryPoint,
    MemoryStore,
    Page,
    access_payload,
    expiry_payload,
)
from .tokens import cap_query, load_encoding

if TYPE_CHECKING:
    from proxy.config import Settings

log = logging.getLogger(__name__)


class MemoryNotFound(MemproxyError, LookupError):
    """No live memory with this id in this tenant and subject (it may exist in another scope)."""


def _is_id(memory_id: object) -> bool:
    """Memory ids are UUIDs; anything else cannot name a memory (and must not reach the store)."""
    try:
        uuid.UUID(str(memory_id))
    except ValueError:
        return False
    return True


def tie_break(point: ClearPoint) -> tuple[float, str]:
    """How memories of equal relevance are ordered: the newer first, then by id."""
    created = point.created_at
    return (-created.timestamp() if created is not None else 0.0, point.id)


@dataclass(frozen=True, slots=True)
class Ranked:
    """A recall candidate with its confidence terms and its place in the fused order, not opened yet:
    only those recall returns are (:meth:`MemoryStore.open`)."""

    candidate: Candidate
    terms: ConfidenceTerms
    rank: int

    @property
    def id(self) -> str:
        return self.candidate.id


def _renumbered(ranked: builtins.list[Ranked]) -> builtins.list[Ranked]:
    """``ranked`` in its new order, ranks renumbered from 0."""
    return [r if r.rank == rank else replace(r, rank=rank) for rank, r in enumerate(ranked)]


def _dated_first(ranked: builtins.list[Ranked], cues: DateCues) -> builtins.list[Ranked]:
    """``ranked`` with the memories learned when the query says moved ahead, in order (ranks renumbered)."""
    if not cues:
        return ranked
    created = [r.candidate.point.created_at for r in ranked]
    return _renumbered(
        [r for r, at in sorted(zip(ranked, created, strict=True), key=lambda p: not (p[1] and cues.match(p[1])))]
    )


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later expiry, ``None`` meaning never."""
    if a is None or b is None:
        return None
    return max(a, b)


class MemoryService:
    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        settings: Settings,
        *,
        sparse: Bm25Encoder | None = None,
        clock: Callable[[], datetime] = utcnow,
        owns_store: bool = False,
        owns_embedder: bool = False,
        reranker: Reranker | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.reranker = reranker
        """The optional cross-encoder stage (:mod:`proxy.memory.rerank`), owned by the service."""
        self.settings = settings
        self.sparse = sparse or Bm25Encoder()
        self.clock = clock
        self.weights = ScoringWeights(
            similarity=settings.memory_weight_similarity,
            recency=settings.memory_weight_recency,
            frequency=settings.memory_weight_frequency,
            half_life_days=settings.memory_half_life_days,
            frequency_cap=settings.memory_frequency_cap,
        )
        self._owns_store, self._owns_embedder = owns_store, owns_embedder
        self.redactor = Redactor(enabled=settings.redact_secrets, extra=settings.redact_patterns)
        self.redactions: Counter[str] = Counter()
        """Secrets replaced by a marker before a write, by kind (``memproxy_redactions_total``)."""
        self._locks: weakref.WeakValueDictionary[Owner, asyncio.Lock] = weakref.WeakValueDictionary()
        # access tracking: scope -> id -> (recalls since last flush, last recall time)
        self._pending: dict[Owner, dict[str, tuple[int, datetime]]] = {}
        self._flush_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.store.dim != self.embedder.dim:
            raise DimensionMismatchError(self.store.collection, self.store.dim, self.embedder.dim)
        await self.store.start()
        await asyncio.to_thread(load_encoding)  # recall caps every query with it: not on the first request

    async def aclose(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
            self._flusher = None
        await self.flush()
        if self.reranker is not None:
            await self.reranker.aclose()
        if self._owns_store:
            await self.store.close()
        if self._owns_embedder:
            await self.embedder.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def of(self, owner: Owner) -> OwnerMemory:
        """The memories of ``owner``: remember, recall, list, update, delete, export, erase."""
        return OwnerMemory(self, owner)

    # --- helpers -----------------------------------------------------------------------------------

    def _now(self, now: datetime | None) -> datetime:
        return as_utc(now) if now is not None else as_utc(self.clock())

    def _restrict(self, assistant_id: str | None) -> str | None:
        """The assistant filter recall and dedupe use: only when per-assistant restriction is on."""
        return assistant_id if self.settings.memory_per_assistant and assistant_id else None

    def _lock(self, scope: Owner) -> asyncio.Lock:
        lock = self._locks.get(scope)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[scope] = lock
        return lock

    def default_ttl(self, kind: str) -> timedelta | None:
        days = self.settings.memory_ttl_days.get(kind)
        return timedelta(days=days) if days else None

    def _expiry(self, kind: str, ttl: timedelta | float | None, now: datetime) -> datetime | None:
        if ttl is None:
            ttl = self.default_ttl(kind)
        elif not isinstance(ttl, timedelta):
            ttl = timedelta(seconds=float(ttl))
        if ttl is None:
            return None
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        return now + ttl

    def _clean_text(self, text: str) -> str:
        text = (text or "").strip()
        if not text:
            raise ValueError("a memory needs non-empty text")
        if len(text) > self.settings.memory_max_chars:
            raise ValueError(f"memory text is longer than {self.settings.memory_max_chars} characters")
        return text

    async def _redact(self, text: str, *, count: bool = True) -> str:
        """``text`` with its secrets replaced by markers (counted by kind, never logged): what is stored,
        embedded and turned into BM25 terms. See :mod:`proxy.memory.redact`."""
        (redacted,) = await self.redactor.redact_off_loop([text])
        if count:
            self.redactions.update(redacted.kinds)
        return redacted.text

    async def embed_texts(self, texts: Sequence[str], *, api_key: str | None = None) -> dict[str, list[float]]:
        """Document vectors of the ``texts`` ``remember`` and ``update`` would accept, in one call to the
        embedder, keyed by the text as those store it (pass the result as their ``vectors``). A batch
        of memories from one turn embeds in one model run per text, and one hop to the model thread."""
        cleaned: list[str] = []
        for text in texts:
            try:
                clean = self._clean_text(text)
            except ValueError:
                continue  # refused by remember/update too: nothing to embed
            cleaned.append(await self._redact(clean, count=False))  # counted when remember/update store it
        unique = list(dict.fromkeys(cleaned))
        if not unique:
            return {}
        return dict(zip(unique, await self.embedder.embed_documents(unique, api_key=api_key), strict=True))

    async def _point(self, memory: Memory, api_key: str | None, dense: list[float] | None = None) -> MemoryPoint:
        if dense is None:
            (dense,) = await self.embedder.embed_documents([memory.text], api_key=api_key)
        return MemoryPoint(memory, dense, self.sparse.document(memory.text))

    # --- writes ------------------------------------------------------------------------------------

    async def expire(self, now: datetime | None = None, *, batch: int = 256) -> list[ExpiredRef]:
        """The janitor step: hard-remove every memory expired at ``now`` and return them for the audit log.

        Memories are known here by id and owner pseudonym only (nothing is opened). Only what was
        really removed is returned: a memory whose expiry was extended between the read and the
        delete (the delete re-checks expiry) stays, and is not reported.
        """
        now = self._now(now)
        removed: list[ExpiredRef] = []
        seen: set[str] = set()
        while True:
            found = [ref for ref in await self.store.find_expired(now, limit=batch) if ref.id not in seen]
            if not found:
                break
            seen.update(ref.id for ref in found)
            by_owner: dict[tuple[str, str], list[ExpiredRef]] = {}
            for ref in found:
                by_owner.setdefault((ref.tenant, ref.owner_hash), []).append(ref)
            for (tenant, owner_hash), refs in by_owner.items():
                gone = set(await self.store.delete_expired(tenant, owner_hash, [ref.id for ref in refs], now))
                removed.extend(ref for ref in refs if ref.id in gone)
                self._forget_pending(tenant, owner_hash, gone)
        return removed

    def _forget_pending(self, tenant: str, owner_hash: str, ids: set[str]) -> None:
        """Drop unflushed access counts of removed memories (their owner known by pseudonym only)."""
        for scope, pending in self._pending.items():
            if (scope.tenant, scope.hash) == (tenant, owner_hash):
                for memory_id in ids:
                    pending.pop(memory_id, None)

    # --- access tracking ---------------------------------------------------------------------------

    def _record_access(self, scope: Owner, ids: list[str], now: datetime) -> None:
        pending = self._pending.setdefault(scope, {})
        for memory_id in ids:
            n, last = pending.get(memory_id, (0, now))
            pending[memory_id] = (n + 1, max(last, now))
        if self._closed:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="memproxy-access-flush")
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self.settings.memory_access_flush_seconds)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:
                log.warning("writing memory access counts failed", exc_info=True)

    async def flush(self) -> None:
        """Write the pending access counts and times now."""
        async with self._flush_lock:
            pending, self._pending = self._pending, {}
            for scope, items in pending.items():
                try:
                    current = await self.store.get(scope, list(items), include_deleted=True)
                    updates = {}
                    for memory in current:
                        n, last = items[memory.id]
                        previous = memory.last_accessed_at
                        updates[memory.id] = access_payload(
                            memory.access_count + n, last if previous is None or last > previous else previous
                        )
                    await self.store.set_payloads(scope, updates)
                except Exception:
                    log.warning("writing memory access counts failed for one scope", exc_info=True)


class OwnerMemory:
    """One owner's memories: every read and write of :class:`MemoryService` for a single owner.

    Get one with ``service.of(owner)``; it is cheap (no I/O), so make one per request or job. The
    store enforces the owner on every operation, so nothing here can reach another owner's memories.
    """

    def __init__(self, service: MemoryService, owner: Owner) -> None:
        self.service, self.owner = service, owner

    def __repr__(self) -> str:
        return f"OwnerMemory({self.owner!r})"

    async def _live(self, memory_id: str, now: datetime | None) -> Memory:
        if not _is_id(memory_id):
            raise MemoryNotFound(memory_id)
        found = await self.service.store.get(self.owner, [str(uuid.UUID(memory_id))], now=now, include_deleted=False)
        if not found:
            raise MemoryNotFound(memory_id)
        return found[0]

    async def remember(
        self,
        text: str,
        kind: str = "fact",
        ttl: timedelta | float | None = None,
        source: Source | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        assistant_id: str | None = None,
        *,
        now: datetime | None = None,
        api_key: str | None = None,
        vectors: Mapping[str, list[float]] | None = None,
    ) -> tuple[Memory, RememberAction]:
        """Store ``text`` for the subject, unless it is already known.

        Returns the memory and what happened: ``"created"``; ``"duplicate"`` (same normalized text) or
        ``"near_duplicate"`` (dense cosine >= ``memory_near_duplicate``), in which case the existing
        memory is touched instead: counted as accessed now, its expiry extended to the later of the two
        (never-expiring wins). ``ttl`` (timedelta or seconds) overrides the kind's default TTL.
        ``vectors`` (from :meth:`MemoryService.embed_texts`) saves embedding the text here.
        """
        now = self.service._now(now)
        text = await self.service._redact(self.service._clean_text(text))
        check_kind(kind)
        expires_at = self.service._expiry(kind, ttl, now)
        restrict = self.service._restrict(assistant_id)
        src = source if isinstance(source, Source) else Source.model_validate(dict(source or {}))
        if assistant_id and not src.assistant_id:
            src = src.model_copy(update={"assistant_id": assistant_id})

        async with self.service._lock(self.owner):
            same = await self.service.store.find(self.owner, text=text, now=now, assistant_id=restrict)
            if same:
                return await self._touch(same[0], expires_at, now), "duplicate"
            dense = (vectors or {}).get(text)
            if dense is None:
                (dense,) = await self.service.embedder.embed_documents([text], api_key=api_key)
            near = await self.service.store.dense_query(self.owner, dense, limit=1, now=now, assistant_id=restrict)
            if near and near[0].score >= self.service.settings.memory_near_duplicate:
                return await self._touch(near[0].memory, expires_at, now), "near_duplicate"
            memory = Memory(
                tenant=self.owner.tenant,
                subject=self.owner.subject,
                text=text,
                kind=kind,
                created_at=now,
                updated_at=now,
                expires_at=expires_at,
                source=src,
                assistant_id=assistant_id,
                metadata=dict(metadata or {}),
            )
            await self.service.store.upsert(self.owner, [await self.service._point(memory, api_key, dense)])
            return memory, "created"

    async def _touch(self, memory: Memory, expires_at: datetime | None, now: datetime) -> Memory:
        new_expiry = _later(memory.expires_at, expires_at)
        if new_expiry != memory.expires_at:
            await self.service.store.set_payloads(self.owner, {memory.id: expiry_payload(new_expiry)})
        self.service._record_access(self.owner, [memory.id], now)
        last = memory.last_accessed_at
        return memory.model_copy(
            update={
                "expires_at": new_expiry,
                "access_count": memory.access_count + 1,
                "last_accessed_at": now if last is None or now > last else last,
            }
        )

    async def update(
        self,
        memory_id: str,
        text: str,
        reason: str | None = None,
        *,
        now: datetime | None = None,
        api_key: str | None = None,
        vectors: Mapping[str, list[float]] | None = None,
    ) -> Memory:
        """Replace a memory's text, keeping the previous text in ``history``; re-embeds it (unless
        ``vectors``, from :meth:`MemoryService.embed_texts`, holds the new text's vector)."""
        now = self.service._now(now)
        text = await self.service._redact(self.service._clean_text(text))
        reason = None if reason is None else await self.service._redact(reason)
        async with self.service._lock(self.owner):
            current = await self._live(memory_id, now)
            if text == current.text:
                return current
            updated = current.model_copy(
                update={
                    "text": text,
                    "updated_at": now,
                    "history": [*current.history, HistoryEntry(text=current.text, changed_at=now, reason=reason)],
                }
            )
            updated = Memory.model_validate(updated.model_dump())
            dense = (vectors or {}).get(text)
            await self.service.store.upsert(self.owner, [await self.service._point(updated, api_key, dense)])
            return updated

    async def amend(
        self,
        memory_id: str,
        *,
        kind: str | None = None,
        ttl: timedelta | None = None,
        never_expires: bool = False,
        now: datetime | None = None,
    ) -> Memory:
        """Change a live memory's kind and expiry (its text is :meth:`update`'s): ``kind`` None keeps it,
        ``ttl`` makes it expire that long after ``now``, ``never_expires`` removes its expiry."""
        now = self.service._now(now)
        if kind is not None:
            check_kind(kind)
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        async with self.service._lock(self.owner):
            current = await self._live(memory_id, now)
            update: dict[str, Any] = {}
            if kind is not None and kind != current.kind:
                update["kind"] = kind
            if never_expires or ttl is not None:
                expires_at = now + ttl if ttl is not None and not never_expires else None
                if expires_at != current.expires_at:
                    update["expires_at"] = expires_at
            if not update:
                return current
            clear = {"kind": update["kind"]} if "kind" in update else {}
            if "expires_at" in update:
                clear.update(expiry_payload(update["expires_at"]))
            await self.service.store.set_payloads(self.owner, {current.id: clear})
            return current.model_copy(update=update)

    async def delete(self, memory_id: str, reason: str | None = None, *, now: datetime | None = None) -> Memory:
        """Soft delete: the memory becomes a tombstone (kept for export and audit, never recalled or listed)."""
        now = self.service._now(now)
        reason = None if reason is None else await self.service._redact(reason)
        async with self.service._lock(self.owner):
            found = await self._live(memory_id, None)
            tombstone = found.model_copy(update={"deleted_at": now, "deleted_reason": reason})
            await self.service.store.rewrite(self.owner, [tombstone])  # the reason is sealed with the rest
            return tombstone

    async def purge(self, ids: builtins.list[str]) -> None:
        """Hard-delete these memories of the owner (a write that must not stand: see :mod:`proxy.fence`)."""
        async with self.service._lock(self.owner):
            await self.service.store.delete(self.owner, ids)
            pending = self.service._pending.get(self.owner, {})
            for memory_id in ids:
                pending.pop(memory_id, None)

    async def erase(self) -> int:
        """Hard-delete everything of a subject, tombstones included, and destroy its data key (GDPR Art. 17).

        Returns the count. Copies of the sealed payloads that the store's files may keep (a write-ahead
        log, segments not yet vacuumed) can no longer be opened once the key is gone.
        """
        async with self.service._lock(self.owner):
            self.service._pending.pop(self.owner, None)
            return await self.service.store.delete_scope(self.owner)

    async def recall(
        self,
        query: str,
        top_k: int | None = None,
        min_confidence: float | None = None,
        assistant_id: str | None = None,
        now: datetime | None = None,
        *,
        min_similarity: float | None = None,
        relative_similarity: float | None = None,
        pinned: bool = True,
        api_key: str | None = None,
    ) -> builtins.list[ScoredMemory]:
        """Memories relevant to ``query``, best first, with their confidence terms.

        Candidates come from a hybrid query (dense + BM25, ``memory_candidates`` each, the fused first
        ``memory_candidates``, cut on stable keys by the store) and are fused again here with reciprocal rank fusion of their cosine and their BM25 score over
        the candidates, equal scores sharing a rank and equal fused scores ordered by date then id, so
        identical inputs give identical rankings (the backend breaks ties by its internal point order).
        That order is kept: on LoCoMo, re-sorting them by confidence cut evidence recall@10 from
        67% to 37% (the similarity term alone ranks like dense search, and recency pushes old but
        relevant facts out; ``memproxy bench locomo``). Confidence (similarity, recency, frequency)
        is computed for each, reported, and gates what is returned: a memory must reach
        ``min_similarity`` (default ``memory_min_similarity``) and ``relative_similarity`` times the
        best candidate's similarity (default ``memory_relative_similarity``, or 0 when the caller sets
        ``min_similarity``), then ``min_confidence``, so a stale or barely related memory stays out while
        a relevant one keeps its place.

        Candidates are ranked on what the store keeps in clear (dates, access count, the cosine of the
        stored dense vector, the stored BM25 weights); only the memories returned are opened (their
        sealed payload decrypted). One that cannot be opened is left out and the ranking made again.

        With ``pinned``, the memories of ``memory_pinned_kinds`` nearest to the query (at most
        ``memory_pinned_max``; constraints such as a diet or an allergy) are returned whatever their
        similarity, in the ``top_k``: a question rarely names the constraint its answer must respect.
        Expired and deleted memories are never returned.
        """
        settings = self.service.settings
        now = self.service._now(now)
        top_k = settings.memory_top_k if top_k is None else top_k
        floor = settings.memory_min_confidence if min_confidence is None else min_confidence
        if relative_similarity is None:
            relative_similarity = settings.memory_relative_similarity if min_similarity is None else 0.0
        sim_floor = settings.memory_min_similarity if min_similarity is None else min_similarity
        if top_k <= 0 or not query.strip():
            return []
        query = cap_query(query)  # bounded work, whatever the client sent: embedding and BM25 see the cap
        dense = await traced("memproxy.embed", self.service.embedder.embed_query(query, api_key=api_key))
        sparse = self.service.sparse.query(query)
        search = self.service.store.recall_candidates(
            self.owner,
            dense,
            sparse,
            # 40 per list: twice that cost 5 ms at 100k memories (unsealing and scoring) for +0.2 recall@10
            limit=max(settings.memory_candidates, top_k),
            now=now,
            assistant_id=self.service._restrict(assistant_id),
            kinds=tuple(settings.memory_pinned_kinds) if pinned else (),
            kinds_limit=settings.memory_pinned_max,
        )
        found, pin_found = await traced("memproxy.search", search)  # a span while tracing, else just awaited
        terms = frozenset(sparse.indices)
        cues = date_cues(query) if settings.memory_date_cues else None
        unreadable: set[str] = set()
        opened: dict[str, Memory] = {}
        while True:  # once, unless a chosen memory cannot be opened: then again without it
            live = self._alive([c for c in found if c.id not in unreadable], now)
            # fusion and confidence of the candidates: well under a ms for 40, more with a deep pool; off the loop
            ranked = await asyncio.to_thread(self._score, terms, live, now)
            if cues:
                ranked = _dated_first(ranked, cues)
            if self.service.reranker is not None:
                ranked = await self._reranked(self.service.reranker, query, ranked, opened)
            pin_live = self._alive([c for c in pin_found if c.id not in unreadable], now)
            pins = self._pins(ranked, pin_live[: settings.memory_pinned_max], now)[:top_k]
            gate = max(sim_floor, relative_similarity * max((r.terms.similarity for r in ranked), default=0.0))
            chosen = {r.id for r in pins}
            kept = [
                r for r in ranked if r.id not in chosen and r.terms.similarity >= gate and r.terms.confidence >= floor
            ]
            picked = sorted(kept[: top_k - len(pins)] + pins, key=lambda r: r.rank)
            missing = await self._open(opened, [r.candidate for r in picked])
            if not missing:
                break
            unreadable |= missing
        scored = [ScoredMemory.from_terms(opened[r.id], r.terms, r.rank) for r in picked]
        if scored:
            self.service._record_access(self.owner, [s.memory.id for s in scored], now)
        return scored

    async def _open(self, opened: dict[str, Memory], candidates: builtins.list[Candidate]) -> set[str]:
        """Open the ``candidates`` not in ``opened`` yet, into it; the ids of those that cannot be opened."""
        wanted = [c for c in candidates if c.id not in opened]
        if not wanted:
            return set()
        for hit in await self.service.store.open(self.owner, wanted):
            opened[hit.memory.id] = hit.memory
        return {c.id for c in wanted if c.id not in opened}

    async def _reranked(
        self, reranker: Reranker, query: str, ranked: builtins.list[Ranked], opened: dict[str, Memory]
    ) -> builtins.list[Ranked]:
        """``ranked`` with its first ``rerank_candidates`` in the cross-encoder's order (equal scores keep
        their fused order), the rest after them; the fused order as it was if the model fails. The head
        is opened (into ``opened``) for its texts; one that cannot be opened is scored as empty text and
        left out by :meth:`recall`."""
        head = ranked[: self.service.settings.rerank_candidates]
        await self._open(opened, [r.candidate for r in head])
        try:
            scores = await reranker.scores(query, [opened[r.id].text if r.id in opened else "" for r in head])
        except Exception as exc:  # noqa: BLE001 - fail open: the fused order is still a ranking
            log.warning("rerank failed, recall keeps the fused order: %s", type(exc).__name__)
            return ranked
        order = sorted(range(len(head)), key=lambda i: (-scores[i], i))
        return _renumbered([head[i] for i in order] + ranked[len(head) :])

    def _pins(
        self, ranked: builtins.list[Ranked], pinned: builtins.list[Candidate], now: datetime
    ) -> builtins.list[Ranked]:
        """The pinned memories as scored among the candidates, or (not among them) by their cosine alone."""
        by_id = {r.id: r for r in ranked}
        return [
            by_id.get(c.id) or Ranked(c, self._terms(c.point, c.score, 0.0, now), len(ranked) + i)
            for i, c in enumerate(pinned)
        ]

    def _alive(self, found: builtins.list[Candidate], now: datetime) -> builtins.list[Candidate]:
        """The candidates of this owner that are neither deleted nor expired at ``now`` (clear fields)."""
        live = []
        for candidate in found:
            point = candidate.point
            if (point.tenant, point.owner_hash) != (self.owner.tenant, self.owner.hash):  # defence in depth
                log.error("memory store returned a memory of another owner; dropped")
                continue
            if not point.deleted and not point.is_expired(now):
                live.append(candidate)
        return live

    def _terms(self, point: ClearPoint, semantic: float, lexical: float, now: datetime) -> ConfidenceTerms:
        return confidence(
            semantic_cosine=semantic,
            lexical=lexical,
            last_touched_at=point.last_touched_at or now,
            access_count=point.access_count,
            now=now,
            weights=self.service.weights,
        )

    def _score(
        self, query_terms: frozenset[int], live: builtins.list[Candidate], now: datetime
    ) -> builtins.list[Ranked]:
        """Every candidate with its confidence terms, in fused order (see :meth:`recall`), from what is
        stored in clear: the cosines the store computed, the BM25 weights as stored (not the text
        tokenized again) and the dates."""
        documents = [c.terms or {} for c in live]
        lexical = lexical_scores(query_terms, [frozenset(d) for d in documents])
        semantic = [c.cosine or 0.0 for c in live]
        # The backend's fused order breaks ties (equal BM25 scores, equal cosines) by its internal point
        # order, which differs between runs and replicas: the candidates are fused again here, equal
        # scores sharing a rank, and equal fused scores ordered by date and id.
        fused = fuse(semantic, bm25_scores(query_terms, documents), k=RRF_K)
        order = sorted(range(len(live)), key=lambda i: (-fused[i], *tie_break(live[i].point)))
        return [
            Ranked(live[i], self._terms(live[i].point, semantic[i], lexical[i], now), rank)
            for rank, i in enumerate(order)
        ]

    async def similar(
        self,
        text: str,
        limit: int = 5,
        *,
        now: datetime | None = None,
        assistant_id: str | None = None,
        api_key: str | None = None,
    ) -> list[tuple[Memory, float]]:
        """Live memories nearest to ``text`` by cosine, with the cosine (for consolidation)."""
        dense = await self.service.embedder.embed_query(text, api_key=api_key)
        hits = await self.service.store.dense_query(
            self.owner,
            dense,
            limit=limit,
            now=self.service._now(now),
            assistant_id=self.service._restrict(assistant_id),
        )
        return [(h.memory, h.score) for h in hits]

    async def get(
        self,
        memory_id: str,
        *,
        include_deleted: bool = False,
        now: datetime | None = None,
    ) -> Memory | None:
        """One memory, or None when it is absent, expired, deleted (unless asked) or in another self.owner."""
        if not _is_id(memory_id):
            return None
        found = await self.service.store.get(
            self.owner, [str(uuid.UUID(memory_id))], now=self.service._now(now), include_deleted=include_deleted
        )
        return found[0] if found else None

    async def list(
        self,
        cursor: str | None = None,
        limit: int = 50,
        include_deleted: bool = False,
        *,
        now: datetime | None = None,
    ) -> Page:
        """A page of the subject's unexpired memories; ``Page.next_cursor`` fetches the next one."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        return await self.service.store.scroll(
            self.owner, cursor=cursor, limit=limit, now=self.service._now(now), include_deleted=include_deleted
        )

    async def export(self) -> builtins.list[Memory]:
        """Everything stored about a subject: history, tombstones and not-yet-removed expired memories."""
        out: builtins.list[Memory] = []
        cursor: str | None = None
        while True:
            page = await self.service.store.scroll(self.owner, cursor=cursor, limit=256, include_deleted=True)
            out.extend(page.memories)
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    async def count(self, *, now: datetime | None = None) -> int:
        return await self.service.store.count(self.owner, now=self.service._now(now))
