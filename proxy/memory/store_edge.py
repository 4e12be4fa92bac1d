"""Embedded backend: Qdrant Edge (``qdrant-edge-py``), Qdrant's engine in-process, persisted in a directory.

An ``EdgeShard`` is driven from one dedicated thread: every call leaves the event loop through a
single-worker executor, so the shard never sees two threads at once and the loop never blocks on it.

Optimizing (building the HNSW index, merging segments) is the exception: ``EdgeShard.optimize()``
holds Python's GIL until it returns, so on any thread of this process it would stop them all, the
event loop included, for as long as the build takes (14-24 s for 100,000 memories in one subject,
``memproxy bench recall``). The proxy
optimizes in a child process instead (:meth:`EdgeStore.optimize_apart`, scheduled by
:mod:`proxy.memory.upkeep`), with the shard closed meanwhile; store calls wait on the store's thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import qdrant_edge as qe

from . import edge_optimize
from .edge_optimize import IndexState
from .sealing import Sealer
from .store import (
    DENSE,
    INDEXED_FIELDS,
    SPARSE,
    DimensionMismatchError,
    MemoryStore,
    Probe,
    Scored,
    SearchPlan,
    SparseVec,
    StoredPoint,
    StoreError,
)

T = TypeVar("T")
Args = TypeVarTuple("Args")

_CONFIG_FILE = "edge_config.json"

OPTIMIZE_TIMEOUT = 3600.0
"""Seconds an optimizing child may take before it is stopped (the store reopens as it was)."""
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
"""The directory holding the ``proxy`` package, on the child's import path."""


@dataclass(frozen=True)
class Optimized:
    """What one :meth:`EdgeStore.optimize_apart` found and did."""

    changed: bool
    """Edge rewrote segments (False: nothing was planned)."""
    before: IndexState
    after: IndexState
    seconds: float
    """Time the store was closed for it: the child's start to the shard open again."""


def _child_env() -> dict[str, str]:
    paths = [_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


class _EdgeDialect:
    def match(self, key: str, value: str) -> qe.FieldCondition:
        return qe.FieldCondition(key, match=qe.MatchValue(value))

    def expired(self, key: str, at: datetime) -> qe.FieldCondition:
        return qe.FieldCondition(key, range=qe.RangeDateTime(lte=at.isoformat()))

    def is_empty(self, key: str) -> qe.IsEmptyCondition:
        return qe.IsEmptyCondition(key)

    def has_ids(self, ids: Sequence[str]) -> qe.HasIdCondition:
        return qe.HasIdCondition(set(ids))

    def combine(
        self, must: list[qe.ConditionType], should: list[qe.ConditionType], must_not: list[qe.ConditionType]
    ) -> qe.Filter:
        return qe.Filter(must=must or None, should=should or None, must_not=must_not or None)


_D = _EdgeDialect()

_INDEX_SCHEMA: dict[str, Callable[[], qe.PayloadSchemaType]] = {
    "keyword": lambda: qe.PayloadSchemaType.Keyword,
    "datetime": lambda: qe.PayloadSchemaType.Datetime,
}


def _sparse(vec: SparseVec) -> qe.SparseVector:
    return qe.SparseVector(list(vec.indices), list(vec.values))


class EdgeStore(MemoryStore):
    """Memories in a Qdrant Edge shard under ``path`` (one directory = one collection)."""

    dialect = _D

    def __init__(self, path: Path | str, *, dim: int, sealer: Sealer, collection: str | None = None) -> None:
        self.path = Path(path)
        self.dim = dim
        self.sealer = sealer
        self.collection = collection or self.path.name
        self._shard: qe.EdgeShard | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def _config(self) -> qe.EdgeConfig:
        """The shard's configuration: what it stores, and where each part lives.

        Every part stays on disk, memory-mapped, read when a query needs it (``Memory.Cold``): the
        dense vectors (Edge's default populated all of them into memory when a segment opened: 1.5 KB
        per memory, most of a loaded store's resident memory), the BM25 index and the id tracker of
        optimized segments, the payload (already Edge's default). Recall reads only the asked
        subject's points, so a proxy keeps resident what its users ask for, and the kernel can take
        those pages back. Scores are unchanged (no quantization). Edge persists the placement in each
        segment: a store created before keeps its old placement until ``optimize()`` rewrites its
        segments, and an earlier release still opens a store created now.
        """
        cold = qe.Memory.Cold
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine, memory=cold)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf, memory=cold)},
            payload_memory=cold,
            id_tracker_memory=cold,
        )

    def _check_existing(self) -> None:
        try:
            stored = json.loads((self.path / _CONFIG_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the memory store's configuration under {self.path}: {exc}") from exc
        dense = (stored.get("vectors") or {}).get(DENSE)
        if not dense:
            raise StoreError(f"{self.path} is a Qdrant Edge shard without a {DENSE!r} vector: not a memproxy store")
        if int(dense.get("size", -1)) != self.dim:
            raise DimensionMismatchError(self.collection, int(dense.get("size", -1)), self.dim, str(self.path))
        sparse = (stored.get("sparse_vectors") or {}).get(SPARSE)
        if not sparse or str(sparse.get("modifier", "")).lower() != "idf":
            raise StoreError(f"{self.path}: sparse vector {SPARSE!r} with the IDF modifier is missing")

    def _open(self) -> qe.EdgeShard:
        if (self.path / _CONFIG_FILE).exists():
            self._check_existing()
            try:
                shard = qe.EdgeShard.load(str(self.path), self._config())
            except Exception as exc:
                raise StoreError(f"cannot open the memory store at {self.path}: {exc}") from exc
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                shard = qe.EdgeShard.create(str(self.path), self._config())
            except Exception as exc:
                raise StoreError(f"cannot create the memory store at {self.path}: {exc}") from exc
        existing = set(shard.info().payload_schema)
        for key, kind in INDEXED_FIELDS.items():
            if key in existing:
                continue
            schema = qe.KeywordIndexParams(is_tenant=True) if key == "tenant" else _INDEX_SCHEMA[kind]()
            shard.update(qe.UpdateOperation.create_field_index(key, schema))
        return shard

    async def start(self) -> None:
        if self._shard is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-edge")
        try:
            self._shard = await self._call(self._open, started=False)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._shard is None or self._executor is None:
            return
        executor, self._executor = self._executor, None  # no new call from here; those queued run first

        def _close() -> None:
            shard, self._shard = self._shard, None  # the one open now: an optimize may have reopened it
            if shard is not None:
                shard.flush()
                shard.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, _close)
        finally:
            executor.shutdown(wait=True)

    async def _call(self, fn: Callable[[*Args], T], *args: *Args, started: bool = True) -> T:
        if self._executor is None or (started and self._shard is None):
            raise StoreError("the memory store is not started (call start())")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError("the memory store is not started (call start())")
        return self._shard

    async def optimize(self) -> bool:
        """Build HNSW / merge segments now, in this process: every thread of it, the event loop included,
        stops until it returns (``optimize()`` holds the GIL). For benchmarks and tests; a serving proxy
        uses :meth:`optimize_apart`."""
        return await self._call(lambda: self.shard.optimize())

    async def index_state(self) -> IndexState:
        """Points, segments and indexed vectors now (cheap: counters)."""
        return await self._call(lambda: IndexState.of(self.shard.info()))

    async def optimize_apart(self) -> Optimized:
        """Optimize in a child process (:mod:`proxy.memory.edge_optimize`) while the event loop runs on.

        One call on the store's thread: flush and close the shard, run the child, open the shard again
        (whatever the child did). Store calls made meanwhile wait for it, in order, so no write is lost;
        :attr:`paused` tells a recall not to wait (it goes on without memory at once). Raises
        :class:`StoreError` when the child fails.
        """
        self.paused = True
        try:
            return await self._call(self._optimize_apart)
        finally:
            self.paused = False

    def _optimize_apart(self) -> Optimized:
        started = time.perf_counter()
        shard = self.shard
        shard.flush()
        shard.close()
        command = [sys.executable, "-m", edge_optimize.__name__, str(self.path)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=OPTIMIZE_TIMEOUT, env=_child_env(), check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise StoreError(f"optimizing the memory store at {self.path} failed: {exc}") from exc
        finally:
            self._shard = self._open()  # the store serves again, optimized or not
        if done.returncode != 0:
            raise StoreError(
                f"optimizing the memory store at {self.path} failed (exit {done.returncode}): {_tail(done.stderr)}"
            )
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1])
            return Optimized(
                changed=bool(report["changed"]),
                before=IndexState(**report["before"]),
                after=IndexState(**report["after"]),
                seconds=time.perf_counter() - started,
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise StoreError(f"the optimizing child's report is unreadable: {_tail(done.stdout)!r}") from exc

    # --- primitives ------------------------------------------------------------------------------

    async def _upsert(self, points: list[StoredPoint]) -> None:
        edge_points = [
            qe.Point(p.id, {DENSE: [float(x) for x in p.dense], SPARSE: _sparse(p.sparse)}, p.payload) for p in points
        ]
        await self._call(lambda: self.shard.update(qe.UpdateOperation.upsert_points(edge_points)))

    async def _apply(self, ops: list[qe.UpdateOperation]) -> None:
        def _apply() -> None:
            for op in ops:
                self.shard.update(op)

        await self._call(_apply)

    async def _set_payloads(self, updates: list[tuple[qe.Filter, dict[str, Any]]]) -> None:
        await self._apply([qe.UpdateOperation.set_payload_by_filter(flt, fields) for flt, fields in updates])

    async def _overwrite_payloads(self, updates: list[tuple[qe.Filter, dict[str, Any]]]) -> None:
        await self._apply([qe.UpdateOperation.overwrite_payload_by_filter(flt, payload) for flt, payload in updates])

    async def _delete(self, flt: qe.Filter) -> None:
        await self._call(lambda: self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt)))

    async def _erase(self, flt: qe.Filter) -> int:
        """Count and delete in one call on the shard's thread, so no write lands between the two."""

        def _count_then_delete() -> int:
            n = self.shard.count(qe.CountRequest(exact=True, filter=flt))
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
            return n

        return await self._call(_count_then_delete)

    async def _count(self, flt: qe.Filter) -> int:
        return await self._call(lambda: self.shard.count(qe.CountRequest(exact=True, filter=flt)))

    @staticmethod
    def _scroll_request(flt: qe.Filter, limit: int, cursor: str | None, vectors: tuple[str, ...]) -> qe.ScrollRequest:
        return qe.ScrollRequest(
            offset=cursor, limit=limit, filter=flt, with_payload=True, with_vector=list(vectors) or False
        )

    async def _scroll_records(
        self, flt: qe.Filter, limit: int, cursor: str | None, *, vectors: tuple[str, ...] = ()
    ) -> tuple[list[qe.Record], qe.PointId | None]:
        request = self._scroll_request(flt, limit, cursor, vectors)
        return await self._call(lambda: self.shard.scroll(request))

    def _query_batch(self, probes: Sequence[Probe]) -> list[list[Scored]]:
        """On the shard's thread: each probe's nearest points, ids and scores only."""
        requests = [
            qe.QueryRequest(
                limit=p.limit,
                query=qe.Query.Nearest(
                    _sparse(p.query.vector)
                    if isinstance(p.query.vector, SparseVec)
                    else [float(x) for x in p.query.vector],
                    using=p.query.using,
                ),
                filter=p.flt,
                with_payload=False,
                with_vector=False,
            )
            for p in probes
        ]
        found = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[Scored(str(p.id), float(p.score)) for p in points] for points in found]

    async def _nearest(self, probes: Sequence[Probe]) -> list[list[Scored]]:
        return await self._call(self._query_batch, probes)

    async def _run(self, plan: SearchPlan) -> list[qe.Record]:
        """All of ``plan`` in one hop to the shard's thread (the choosing is a few tens of microseconds of
        Python). The chosen points are read by id: they matched their search's filter in this same call,
        and no write can come in between on the shard's one thread (a filtered scroll instead cost 1.0 to
        1.3 ms more at 100,000 memories, optimized: ``memproxy bench recall``)."""
        with_vector = list(plan.vectors) or False

        def run() -> list[qe.Record]:
            extra = plan.choose(self._query_batch(plan.probes()))
            if extra:
                plan.scored(self._query_batch(extra))
            ids: list[qe.PointId] = [*plan.ids]
            return self.shard.retrieve(ids, with_payload=True, with_vector=with_vector) if ids else []

        return await self._call(run)
