"""The corpus of ``bench recall``: a pool of sentences embedded once, and memories made from it
(pool vectors plus noise) bulk-loaded straight into a store, spread over subjects."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from proxy.bench.corpus import fact_pool
from proxy.bench.locomo.data import load_locomo
from proxy.bench.membench import embed_cached
from proxy.memory.embed import LocalEmbedder
from proxy.memory.models import Memory
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store import MemoryPoint
from proxy.owner import Owner

TENANT = "bench"
SECRET = b"bench"
"""The benchmark's own server secret: owners' pseudonyms only need to be stable within a run."""
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
#: Std-dev of the noise added to each coordinate of a reused pool vector (384 dims: cosine ~0.96 to the original).
NOISE = 0.015


def parse_sizes(text: str) -> list[int]:
    """Store sizes as people write them: ``10k,100k``, ``1M``, ``2_500``, ``1.5k``."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        factor = 1
        if part.endswith("k"):
            factor, part = 1_000, part[:-1]
        elif part.endswith("m"):
            factor, part = 1_000_000, part[:-1]
        value = int(float(part) * factor)
        if value <= 0:
            raise ValueError(f"size must be positive: {part!r}")
        sizes.append(value)
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def pool_texts(pool_size: int, data: Path | None = None) -> tuple[list[str], list[str], str]:
    """The pool's distinct sentences, the questions to ask first, and what the sentences are: the turns
    and questions of a LoCoMo-format file, else generated fact sentences and no questions."""
    if data is None:
        return fact_pool(pool_size), [], "generated fact sentences"
    dataset = load_locomo(data)
    texts = list(dict.fromkeys(t.memory_text() for c in dataset.conversations for t in c.turns))[:pool_size]
    asked = list(dict.fromkeys(q.question for c in dataset.conversations for q in c.questions))
    return texts, asked, f"LoCoMo turns from {data.name}"


@dataclass
class Pool:
    texts: list[str]
    vectors: np.ndarray  # rows, normalized
    sparse: list[Any]  # Bm25Encoder.document of each text
    embed_seconds: float
    source: str
    query_source: str = "distinct user messages from templates"


async def make_pool(embedder: LocalEmbedder, texts: list[str], source: str, cache_dir: Path | None = None) -> Pool:
    vectors, seconds, _ = await embed_cached(embedder, texts, cache_dir)
    encoder = Bm25Encoder()
    return Pool(texts, vectors, [encoder.document(t) for t in texts], seconds, source)


def subject_name(index: int) -> str:
    return f"user-{index:05d}"


@dataclass
class Layout:
    name: str
    subjects: int


def shares(total: int, subjects: int) -> list[int]:
    """How many of ``total`` memories each subject gets (as even as possible)."""
    base, extra = divmod(total, subjects)
    return [base + (1 if i < extra else 0) for i in range(subjects)]


@dataclass
class LoadStats:
    memories: int
    prep_seconds: float = 0.0
    upsert_seconds: float = 0.0
    optimize_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.memories / self.upsert_seconds if self.upsert_seconds > 0 else float("nan")


async def bulk_load(
    store: Any,
    pool: Pool,
    total: int,
    layout: Layout,
    *,
    seed: int = 1,
    batch: int = 512,
    advance: Callable[[int], None] = lambda _n: None,
) -> LoadStats:
    """Upsert ``total`` memories spread over ``layout.subjects`` subjects, straight through the store.

    Subject s takes consecutive pool sentences from a subject-specific offset (so a subject holds
    no sentence twice while its share fits in the pool); every vector gets its own noise; creation
    times are spread over the past year so recency varies.
    """
    rng = np.random.default_rng(seed)
    stats = LoadStats(total)
    size = len(pool.texts)
    for s, count in enumerate(shares(total, layout.subjects)):
        if count == 0:
            continue
        scope = Owner.of(SECRET, TENANT, subject_name(s))
        offset = (s * 7919) % size
        for start in range(0, count, batch):
            started = time.perf_counter()
            n = min(batch, count - start)
            idx = (offset + np.arange(start, start + n)) % size
            vecs = pool.vectors[idx] + rng.normal(0.0, NOISE, size=(n, pool.vectors.shape[1])).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            ages = rng.uniform(0, 365, size=n)
            points = []
            for row, i in enumerate(idx):
                at = NOW - timedelta(days=float(ages[row]))
                memory = Memory(tenant=TENANT, subject=scope.subject, text=pool.texts[i], created_at=at, updated_at=at)
                points.append(MemoryPoint(memory, vecs[row], pool.sparse[i]))
            prepared = time.perf_counter()
            await store.upsert(scope, points)
            stats.prep_seconds += prepared - started
            stats.upsert_seconds += time.perf_counter() - prepared
            advance(n)
    return stats
