"""Server backend: a Qdrant server or cluster through ``qdrant_client.AsyncQdrantClient``.

Any ``AsyncQdrantClient`` works, including local mode (``location=":memory:"`` or ``path=...``),
which runs the same client code path and is what the contract tests use.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

from .models import Memory
from .store import (
    DENSE,
    INDEXED_FIELDS,
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


class _QdrantDialect:
    def match(self, key: str, value: str) -> Any:
        return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))

    def expired(self, key: str, at: datetime) -> Any:
        return qm.FieldCondition(key=key, range=qm.DatetimeRange(lte=at))

    def is_empty(self, key: str) -> Any:
        return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=key))

    def has_ids(self, ids: Sequence[str]) -> Any:
        return qm.HasIdCondition(has_id=list(ids))

    def combine(self, must: list[Any], should: list[Any], must_not: list[Any]) -> qm.Filter:
        return qm.Filter(must=must or None, should=should or None, must_not=must_not or None)


_D = _QdrantDialect()


def _index_schema(key: str, kind: str) -> Any:
    if key == "tenant":
        return qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    return {"keyword": qm.PayloadSchemaType.KEYWORD, "datetime": qm.PayloadSchemaType.DATETIME}[kind]


def _sparse(vec: SparseVec) -> qm.SparseVector:
    return qm.SparseVector(indices=list(vec.indices), values=list(vec.values))


class QdrantStore:
    """Memories in one collection of a Qdrant server (or a local-mode client)."""

    def __init__(self, client: AsyncQdrantClient, *, collection: str, dim: int, owns_client: bool = False) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim
        self._owns_client = owns_client
        self._started = False

    @classmethod
    def from_url(cls, url: str, *, api_key: str | None, collection: str, dim: int) -> QdrantStore:
        return cls(AsyncQdrantClient(url=url, api_key=api_key), collection=collection, dim=dim, owns_client=True)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        try:
            exists = await self.client.collection_exists(self.collection)
            if exists:
                await self._check_existing()
            else:
                await self.client.create_collection(
                    self.collection,
                    vectors_config={DENSE: qm.VectorParams(size=self.dim, distance=qm.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
                )
            info = await self.client.get_collection(self.collection)
            existing = set(info.payload_schema or {})
            with warnings.catch_warnings():
                # local mode warns that payload indexes have no effect there; a server uses them
                warnings.filterwarnings("ignore", message=".*[Pp]ayload indexes have no effect.*")
                for key, kind in INDEXED_FIELDS.items():
                    if key not in existing:
                        await self.client.create_payload_index(self.collection, key, _index_schema(key, kind), wait=True)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection, auth, protocol errors: say where
            raise StoreError(f"cannot open Qdrant collection {self.collection!r}: {exc}") from exc
        self._started = True

    async def _check_existing(self) -> None:
        info = await self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if dense is None:
            raise StoreError(f"collection {self.collection!r} has no {DENSE!r} vector: not a memproxy collection")
        if dense.size != self.dim:
            raise DimensionMismatchError(self.collection, dense.size, self.dim)
        sparse = (info.config.params.sparse_vectors or {}).get(SPARSE)
        if sparse is None or sparse.modifier != qm.Modifier.IDF:
            raise StoreError(f"collection {self.collection!r}: sparse vector {SPARSE!r} with the IDF modifier is missing")

    async def close(self) -> None:
        self._started = False
        if self._owns_client:
            await self.client.close()

    # --- writes ------------------------------------------------------------------------------------

    async def upsert(self, scope: Scope, points: Sequence[MemoryPoint]) -> None:
        checked = check_points(scope, points, self.dim)
        if not checked:
            return
        structs = [
            qm.PointStruct(
                id=p.memory.id,
                vector={DENSE: [float(x) for x in p.dense], SPARSE: _sparse(p.sparse)},
                payload=memory_to_payload(p.memory),
            )
            for p in checked
        ]
        await self.client.upsert(self.collection, points=structs, wait=True)

    async def set_payloads(self, scope: Scope, updates: dict[str, dict[str, Any]]) -> None:
        require_scope(scope)
        ops = [
            qm.SetPayloadOperation(
                set_payload=qm.SetPayload(
                    payload=fields, filter=build_filter(FilterSpec(scope, include_deleted=True, ids=(mid,)), _D)
                )
            )
            for mid, fields in updates.items()
        ]
        if ops:
            await self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    async def delete(self, scope: Scope, ids: Sequence[str], *, expired_at: datetime | None = None) -> None:
        require_scope(scope)
        if not ids:
            return
        flt = build_filter(FilterSpec(scope, include_deleted=True, ids=tuple(ids), expired_at=expired_at), _D)
        await self.client.delete(self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True)

    async def delete_scope(self, scope: Scope) -> int:
        flt = build_filter(FilterSpec(scope, include_deleted=True), _D)
        n = (await self.client.count(self.collection, count_filter=flt, exact=True)).count
        await self.client.delete(self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True)
        return n

    # --- reads -------------------------------------------------------------------------------------

    @staticmethod
    def _hits(points: list[qm.ScoredPoint], with_dense: bool) -> list[Hit]:
        hits = []
        for p in points:
            dense = p.vector.get(DENSE) if with_dense and isinstance(p.vector, dict) else None
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
        prefetch = [qm.Prefetch(query=[float(x) for x in dense], using=DENSE, limit=limit, filter=flt)]
        if sparse.indices:
            prefetch.append(qm.Prefetch(query=_sparse(sparse), using=SPARSE, limit=limit, filter=flt))
        result = await self.client.query_points(
            self.collection,
            prefetch=prefetch,
            query=qm.FusionQuery(fusion=qm.Fusion.RRF),  # k = RRF_K, the server default (works on older servers)
            query_filter=flt,
            limit=limit,
            with_payload=True,
            with_vectors=[DENSE],
        )
        return self._hits(result.points, with_dense=True)

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
        result = await self.client.query_points(
            self.collection,
            query=[float(x) for x in dense],
            using=DENSE,
            query_filter=flt,
            limit=limit,
            with_payload=True,
            with_vectors=False,
        )
        return self._hits(result.points, with_dense=False)

    async def _scroll(self, flt: qm.Filter, limit: int, cursor: str | None = None) -> tuple[list[Memory], str | None]:
        records, next_offset = await self.client.scroll(
            self.collection, scroll_filter=flt, limit=limit, offset=cursor, with_payload=True, with_vectors=False
        )
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
        flt = build_filter(FilterSpec(scope, now=now, include_deleted=include_deleted), _D)
        return (await self.client.count(self.collection, count_filter=flt, exact=True)).count

    async def find_expired(self, now: datetime, *, limit: int = 256) -> list[Memory]:
        memories, _ = await self._scroll(build_expired_filter(now, _D), limit)
        return memories
