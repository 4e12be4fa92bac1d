"""Server backend: a Qdrant server or cluster through ``qdrant_client.AsyncQdrantClient``.

Any ``AsyncQdrantClient`` works, including local mode (``location=":memory:"`` or ``path=...``),
which runs the same client code path and is what the contract tests use.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

from .sealing import Sealer
from .store import (
    DENSE,
    INDEXED_FIELDS,
    SPARSE,
    DimensionMismatchError,
    MemoryStore,
    Probe,
    Scored,
    SparseVec,
    StoredPoint,
    StoreError,
)

if TYPE_CHECKING:
    from qdrant_client.conversions.common_types import PointId


class _QdrantDialect:
    def match(self, key: str, value: str) -> qm.FieldCondition:
        return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))

    def expired(self, key: str, at: datetime) -> qm.FieldCondition:
        return qm.FieldCondition(key=key, range=qm.DatetimeRange(lte=at))

    def is_empty(self, key: str) -> qm.IsEmptyCondition:
        return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=key))

    def has_ids(self, ids: Sequence[str]) -> qm.HasIdCondition:
        return qm.HasIdCondition(has_id=list(ids))

    def combine(self, must: list[qm.Condition], should: list[qm.Condition], must_not: list[qm.Condition]) -> qm.Filter:
        return qm.Filter(must=must or None, should=should or None, must_not=must_not or None)


_D = _QdrantDialect()


def _index_schema(key: str, kind: str) -> qm.PayloadSchemaType | qm.KeywordIndexParams:
    if key == "tenant":
        return qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    return {"keyword": qm.PayloadSchemaType.KEYWORD, "datetime": qm.PayloadSchemaType.DATETIME}[kind]


def _sparse(vec: SparseVec) -> qm.SparseVector:
    return qm.SparseVector(indices=list(vec.indices), values=list(vec.values))


class QdrantStore(MemoryStore):
    """Memories in one collection of a Qdrant server (or a local-mode client)."""

    dialect = _D

    def __init__(
        self, client: AsyncQdrantClient, *, collection: str, dim: int, sealer: Sealer, owns_client: bool = False
    ) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim
        self.sealer = sealer
        self._owns_client = owns_client
        self._started = False

    @classmethod
    def from_url(cls, url: str, *, api_key: str | None, collection: str, dim: int, sealer: Sealer) -> QdrantStore:
        client = AsyncQdrantClient(url=url, api_key=api_key)
        return cls(client, collection=collection, dim=dim, sealer=sealer, owns_client=True)

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
                        await self.client.create_payload_index(
                            self.collection, key, _index_schema(key, kind), wait=True
                        )
        except StoreError:
            raise
        except Exception as exc:
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
            raise StoreError(
                f"collection {self.collection!r}: sparse vector {SPARSE!r} with the IDF modifier is missing"
            )

    async def close(self) -> None:
        self._started = False
        if self._owns_client:
            await self.client.close()

    # --- primitives ------------------------------------------------------------------------------

    async def _upsert(self, points: list[StoredPoint]) -> None:
        structs = [
            qm.PointStruct(
                id=p.id, vector={DENSE: [float(x) for x in p.dense], SPARSE: _sparse(p.sparse)}, payload=p.payload
            )
            for p in points
        ]
        await self.client.upsert(self.collection, points=structs, wait=True)

    async def _set_payloads(self, updates: list[tuple[qm.Filter, dict[str, Any]]]) -> None:
        ops = [qm.SetPayloadOperation(set_payload=qm.SetPayload(payload=fields, filter=flt)) for flt, fields in updates]
        await self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    async def _overwrite_payloads(self, updates: list[tuple[qm.Filter, dict[str, Any]]]) -> None:
        ops = [
            qm.OverwritePayloadOperation(overwrite_payload=qm.SetPayload(payload=payload, filter=flt))
            for flt, payload in updates
        ]
        await self.client.batch_update_points(self.collection, update_operations=ops, wait=True)

    async def _delete(self, flt: qm.Filter) -> None:
        await self.client.delete(self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True)

    async def _count(self, flt: qm.Filter) -> int:
        return (await self.client.count(self.collection, count_filter=flt, exact=True)).count

    async def _scroll_records(
        self, flt: qm.Filter, limit: int, cursor: str | None, *, vectors: tuple[str, ...] = ()
    ) -> tuple[list[qm.Record], PointId | None]:
        return await self.client.scroll(
            self.collection,
            scroll_filter=flt,
            limit=limit,
            offset=cursor,
            with_payload=True,
            with_vectors=list(vectors) or False,
        )

    async def _nearest(self, probes: Sequence[Probe]) -> list[list[Scored]]:
        requests = [
            qm.QueryRequest(
                query=_sparse(p.query.vector)
                if isinstance(p.query.vector, SparseVec)
                else [float(x) for x in p.query.vector],
                using=p.query.using,
                filter=p.flt,
                limit=p.limit,
                with_payload=False,
                with_vector=False,
            )
            for p in probes
        ]
        found = await self.client.query_batch_points(self.collection, requests=requests)
        return [[Scored(str(p.id), float(p.score)) for p in response.points] for response in found]
