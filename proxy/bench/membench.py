"""What the memory benchmarks (``bench recall``, ``bench locomo``) share: the embedder, the service, timers.

Both load the local ONNX embedder the proxy would use (``MEMPROXY_EMBED_MODEL`` /
``MEMPROXY_EMBED_MODEL_PATH``, or ``--model-path``) and drive the real :class:`MemoryService`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from proxy.config import Settings
from proxy.memory.embed import DEFAULT_MODEL_CACHE, LocalEmbedder, local_embedder
from proxy.memory.service import MemoryService
from proxy.owner import Owner


def bench_settings(data_dir: Path, **overrides: Any) -> Settings:
    """The operator's settings (environment), with the data directory the benchmark owns."""
    return Settings(data_dir=data_dir, **overrides)


def load_embedder(settings: Settings, model_path: Path | None = None, *, cache_size: int = 0) -> LocalEmbedder:
    """The local embedder the proxy would use (its int8 copy kept under ``~/.cache/memproxy/models``
    between runs); ``cache_size=0`` so every query pays its embedding."""
    return local_embedder(settings, model_path=model_path, cache_size=cache_size, cache_dir=DEFAULT_MODEL_CACHE)


class BenchService(MemoryService):
    """The real service, minus the write-back of access counts after a recall.

    In the proxy that write-back runs in the background every ``memory_access_flush_seconds``; here it
    would make each query change the next one's frequency term (LoCoMo), and on qdrant-client's local
    mode (which runs on the event loop) it would stall the measured queries. Recall itself is unchanged.
    """

    def _record_access(self, scope: Owner, ids: list[str], now: datetime) -> None:
        return None


class TimedEmbedder:
    """Delegates to an embedder and records how long each ``embed_query`` took (seconds)."""

    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.name = inner.name
        self.query_times: list[float] = []

    async def embed_query(self, text: str, *, api_key: str | None = None) -> list[float]:
        started = time.perf_counter()
        try:
            return await self.inner.embed_query(text, api_key=api_key)
        finally:
            self.query_times.append(time.perf_counter() - started)

    async def embed_documents(self, texts: Sequence[str], *, api_key: str | None = None) -> list[list[float]]:
        return await self.inner.embed_documents(texts, api_key=api_key)

    def expected_wait(self) -> float:
        return self.inner.expected_wait()

    async def aclose(self) -> None:
        """The inner embedder belongs to the caller."""


class TimedStore:
    """Delegates to a store and records how long each hybrid search took (seconds): ``recall_candidates``
    (what recall calls: the hybrid candidates and the pinned kinds' nearest, not opened) or ``hybrid_query``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.collection = inner.collection
        self.dim = inner.dim
        self.query_times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _timed(self, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.query_times.append(time.perf_counter() - started)

    async def recall_candidates(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(self.inner.recall_candidates(*args, **kwargs))

    async def hybrid_query(self, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(self.inner.hybrid_query(*args, **kwargs))


async def embed_cached(
    embedder: LocalEmbedder, texts: Sequence[str], cache_dir: Path | None, *, batch: int = 256
) -> tuple[np.ndarray, float, bool]:
    """Document vectors of ``texts`` (rows), the seconds it took, and whether they came from the cache.

    With ``cache_dir`` the vectors are kept in ``<cache_dir>/<sha256 of model and texts>.npy``, so a
    second run skips the embedding; the key changes whenever a text or the model does.
    """
    key = hashlib.sha256(
        "\x00".join([embedder.name, embedder.variant, str(embedder.dim), *texts]).encode()
    ).hexdigest()[:32]
    file = cache_dir / f"{key}.npy" if cache_dir is not None else None
    started = time.perf_counter()
    if file is not None and file.exists():
        vectors = np.load(file)
        if vectors.shape == (len(texts), embedder.dim):
            return vectors, time.perf_counter() - started, True
    # similar lengths together: a batch is padded to its longest text, so this is several times faster
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for i in range(0, len(order), batch):
        chunk = order[i : i + batch]
        vectors[chunk] = np.asarray(await embedder.embed_documents([texts[j] for j in chunk]), dtype=np.float32)
    elapsed = time.perf_counter() - started
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(file, vectors)
    return vectors, elapsed, False
