"""Embedded backend: Qdrant Edge (``qdrant-edge-py``), Qdrant's engine in-process, persisted in a directory.

An ``EdgeShard`` is driven from one dedicated thread: every call leaves the event loop through a
single-worker executor, so the shard never sees two threads at once and the loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import qdrant_edge as qe

from .models import Memory
from .store import (
    DENSE,
    INDEXED_FIELDS,
    RRF_K,
    SPARSE,
    DimensionMismatchError,
    FilterSpec,
    Hit,
    MemoryPoint,
    Page,
    Scope,
    SparseVec,
    StoreError,
    build_expired_filter,
    build_filter,
    check_points,
    memory_to_payload,
    payload_to_memory,
    require_scope,
)

T = TypeVar("T")

_CONFIG_FILE = "edge_config.json"


class _EdgeDialect:
    def match(self, key: str, value: str) -> Any:
        return qe.FieldCondition(key, match=qe.MatchValue(value))

    def expired(self, key: str, at: datetime) -> Any:
        return qe.FieldCondition(key, range=qe.RangeDateTime(lte=at.isoformat()))

    def is_empty(self, key: str) -> Any:
        return qe.IsEmptyCondition(key)

    def has_ids(self, ids: Sequence[str]) -> Any:
        return qe.HasIdCondition(set(ids))

    def combine(self, must: list[Any], should: list[Any], must_not: list[Any]) -> qe.Filter:
        return qe.Filter(must=must or None, should=should or None, must_not=must_not or None)


_D = _EdgeDialect()

_INDEX_SCHEMA: dict[str, Callable[[], Any]] = {
    "keyword": lambda: qe.PayloadSchemaType.Keyword,
    "datetime": lambda: qe.PayloadSchemaType.Datetime,
}


def _sparse(vec: SparseVec) -> qe.SparseVector:
    return qe.SparseVector(list(vec.indices), list(vec.values))


class EdgeStore:
    """Memories in a Qdrant Edge shard under ``path`` (one directory = one collection)."""

    def __init__(self, path: Path | str, *, dim: int, collection: str | None = None) -> None:
        self.path = Path(path)
        self.dim = dim
        self.collection = collection or self.path.name
        self._shard: qe.EdgeShard | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
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
            except Exception as exc:  # noqa: BLE001 - the binding raises plain Exception
                raise StoreError(f"cannot open the memory store at {self.path}: {exc}") from exc
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                shard = qe.EdgeShard.create(str(self.path), self._config())
            except Exception as exc:  # noqa: BLE001
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
        shard, self._shard = self._shard, None

        def _close() -> None:
            shard.flush()
            shard.close()

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _call(self, fn: Callable[..., T], *args: Any, started: bool = True) -> T:
        if self._executor is None or (started and self._shard is None):
            raise StoreError("the memory store is not started (call start())")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError("the memory store is not started (call start())")
        return self._shard

    async def optimize(self) -> bool:
        """Build HNSW / merge segments now (blocks other store calls while it runs)."""
        return await self._call(lambda: self.shard.optimize())

    # --- writes ------------------------------------------------------------------------------------

    async def upsert(self, scope: Scope, points: Sequence[MemoryPoint]) -> None:
        checked = check_points(scope, points, self.dim)
        if not checked:
            return
        edge_points = [
            qe.Point(
                p.memory.id,
                {DENSE: [float(x) for x in p.dense], SPARSE: _sparse(p.sparse)},
                memory_to_payload(p.memory),
            )
            for p in checked
        ]
        await self._call(lambda: self.shard.update(qe.UpdateOperation.upsert_points(edge_points)))

    async def set_payloads(self, scope: Scope, updates: dict[str, dict[str, Any]]) -> None:
        require_scope(scope)
        ops = [
            qe.UpdateOperation.set_payload_by_filter(
                build_filter(FilterSpec(scope, include_deleted=True, ids=(mid,)), _D), fields
            )
            for mid, fields in updates.items()
        ]

        def _apply() -> None:
            for op in ops:
                self.shard.update(op)

        if ops:
            await self._call(_apply)

    async def delete(self, scope: Scope, ids: Sequence[str], *, expired_at: datetime | None = None) -> None:
        require_scope(scope)
        if not ids:
            return
        flt = build_filter(FilterSpec(scope, include_deleted=True, ids=tuple(ids), expired_at=expired_at), _D)
        await self._call(lambda: self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt)))

    async def delete_scope(self, scope: Scope) -> int:
        flt = build_filter(FilterSpec(scope, include_deleted=True), _D)

        def _erase() -> int:
            n = self.shard.count(qe.CountRequest(exact=True, filter=flt))
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
            return n

        return await self._call(_erase)

    # --- reads -------------------------------------------------------------------------------------

    @staticmethod
    def _hits(points: list[Any], with_dense: bool) -> list[Hit]:
        hits = []
        for p in points:
            dense = (p.vector or {}).get(DENSE) if with_dense else None
            hits.append(Hit(payload_to_memory(p.id, p.payload), float(p.score), list(dense) if dense else None))
        return hits

    async def hybrid_query(
        self,
        scope: Scope,
        dense: Sequence[float],
        sparse: SparseVec,
        *,
        limit: int,
        now: datetime,
        assistant_id: str | None = None,
    ) -> list[Hit]:
        flt = build_filter(FilterSpec(scope, now=now, assistant_id=assistant_id), _D)
        prefetches = [qe.Prefetch(limit=limit, query=qe.Query.Nearest([float(x) for x in dense], using=DENSE), filter=flt)]
        if sparse.indices:
            prefetches.append(qe.Prefetch(limit=limit, query=qe.Query.Nearest(_sparse(sparse), using=SPARSE), filter=flt))
        request = qe.QueryRequest(
            limit=limit,
            prefetches=prefetches,
            query=qe.Fusion.Rrf(k=RRF_K),
            filter=flt,
            with_payload=True,
            with_vector=[DENSE],
        )
        points = await self._call(lambda: self.shard.query(request))
        return self._hits(points, with_dense=True)

    async def dense_query(
        self,
        scope: Scope,
        dense: Sequence[float],
        *,
        limit: int,
        now: datetime,
        assistant_id: str | None = None,
    ) -> list[Hit]:
        flt = build_filter(FilterSpec(scope, now=now, assistant_id=assistant_id), _D)
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest([float(x) for x in dense], using=DENSE),
            filter=flt,
            with_payload=True,
            with_vector=False,
        )
        points = await self._call(lambda: self.shard.query(request))
        return self._hits(points, with_dense=False)

    async def _scroll(self, flt: qe.Filter, limit: int, cursor: str | None = None) -> tuple[list[Memory], str | None]:
        request = qe.ScrollRequest(offset=cursor, limit=limit, filter=flt, with_payload=True, with_vector=False)
        records, next_offset = await self._call(lambda: self.shard.scroll(request))
        memories = [payload_to_memory(r.id, r.payload) for r in records]
        return memories, (str(next_offset) if next_offset is not None else None)

    async def get(
        self,
        scope: Scope,
        ids: Sequence[str],
        *,
        now: datetime | None = None,
        include_deleted: bool = True,
    ) -> list[Memory]:
        require_scope(scope)
        if not ids:
            return []
        flt = build_filter(FilterSpec(scope, now=now, include_deleted=include_deleted, ids=tuple(ids)), _D)
        memories, _ = await self._scroll(flt, len(ids))
        return memories

    async def find(
        self,
        scope: Scope,
        *,
        content_hash: str,
        now: datetime | None = None,
        assistant_id: str | None = None,
        limit: int = 1,
    ) -> list[Memory]:
        flt = build_filter(FilterSpec(scope, now=now, assistant_id=assistant_id, content_hash=content_hash), _D)
        memories, _ = await self._scroll(flt, limit)
        return memories

    async def scroll(
        self,
        scope: Scope,
        *,
        cursor: str | None = None,
        limit: int = 50,
        now: datetime | None = None,
        include_deleted: bool = False,
    ) -> Page:
        flt = build_filter(FilterSpec(scope, now=now, include_deleted=include_deleted), _D)
        memories, next_cursor = await self._scroll(flt, limit, cursor)
        return Page(memories, next_cursor)

    async def count(self, scope: Scope, *, now: datetime | None = None, include_deleted: bool = False) -> int:
        flt = build_filter(FilterSpec(require_scope(scope), now=now, include_deleted=include_deleted), _D)
        return await self._call(lambda: self.shard.count(qe.CountRequest(exact=True, filter=flt)))

    async def find_expired(self, now: datetime, *, limit: int = 256) -> list[Memory]:
        memories, _ = await self._scroll(build_expired_filter(now, _D), limit)
        return memories
