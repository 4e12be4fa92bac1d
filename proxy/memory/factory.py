"""Build the memory layer from Settings: embedder, store (embedded Qdrant Edge or a server), service."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

import httpx2

from proxy.owner import Owner

from .embed import Embedder, make_embedder
from .rerank import make_reranker
from .sealing import KeyStore, Sealer
from .service import MemoryService
from .store import MemoryStore

if TYPE_CHECKING:
    from proxy.config import Settings


def make_store(settings: Settings, dim: int, sealer: Sealer) -> MemoryStore:
    """``qdrant_url`` set: that server; otherwise Qdrant Edge under ``data_dir/qdrant/<collection>``."""
    if settings.qdrant_url:
        from .store_qdrant import QdrantStore

        return QdrantStore.from_url(
            settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            collection=settings.collection,
            dim=dim,
            sealer=sealer,
        )
    from .store_edge import EdgeStore

    path = settings.data_dir / "qdrant" / settings.collection
    return EdgeStore(path, dim=dim, sealer=sealer, collection=settings.collection)


async def create_memory_service(
    settings: Settings,
    http_client: httpx2.AsyncClient | None = None,
    *,
    secret: bytes,
    keys: KeyStore,
    embedder: Embedder | None = None,
    owns_embedder: bool | None = None,
) -> MemoryService:
    """A started service that owns its store, and its embedder unless one is given (``aclose()`` releases them).

    Every payload is sealed under per-owner data keys kept wrapped in ``keys`` under a key derived from
    the server ``secret``; points written before sealing existed are sealed here, before it serves.
    Raises ``DimensionMismatchError`` when the existing collection was built with another embedding size.
    """
    owns_embedder = embedder is None if owns_embedder is None else owns_embedder
    embedder = embedder or make_embedder(settings, http_client)
    try:
        reranker = await asyncio.to_thread(make_reranker, settings)  # loading a model blocks for a while
    except BaseException:
        if owns_embedder:
            await embedder.aclose()
        raise
    store = make_store(settings, embedder.dim, Sealer(keys, secret))
    service = MemoryService(store, embedder, settings, owns_store=True, owns_embedder=owns_embedder, reranker=reranker)
    try:
        await service.start()
        await store.seal_legacy(partial(Owner.of, secret))
    except BaseException:
        await store.close()
        if reranker is not None:
            await reranker.aclose()
        if owns_embedder:
            await embedder.aclose()
        raise
    return service
