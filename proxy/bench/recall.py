"""``memproxy bench recall``: how long the recall path takes, and how fast memories go in.

The recall path is what the proxy runs before forwarding a request: embed the query with the real
model, hybrid query (dense + BM25, RRF) filtered to the tenant and subject, confidence scoring,
and rendering the block (:func:`proxy.memory.render.render_block`). Each sample is one
``MemoryService.recall`` + ``render_block``, timed end to end, with the embedding and the store
query timed inside it.

Building 100k memories by embedding 100k texts would take most of the run, so the corpus is
built from a pool of distinct sentences embedded once with the real model: memory i reuses a
pool sentence and its vector plus small deterministic noise, and is bulk-upserted through the
store (not ``remember``). Queries are fresh text embedded per call (query cache off).

Layouts: memories spread over many subjects of one tenant (each recall filters to one subject's
share), and the worst case, every memory in one subject.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from proxy.bench.corpus import fact_pool, notes, queries
from proxy.bench.harness import ms_percentile, percentile, print_notes, print_table
from proxy.bench.membench import BenchService, TimedEmbedder, TimedStore, bench_settings, embed_cached, load_embedder
from proxy.config import Settings
from proxy.memory.embed import LocalEmbedder
from proxy.memory.models import Memory
from proxy.memory.render import render_block
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store import MemoryPoint
from proxy.owner import Owner

TENANT = "bench"
SECRET = b"bench"
"""The benchmark's own server secret: owners' pseudonyms only need to be stable within a run."""
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
#: Std-dev of the noise added to each coordinate of a reused pool vector (384 dims: cosine ~0.96 to the original).
NOISE = 0.015
BACKENDS = ("edge", "qdrant-local")
#: qdrant-client's own limit for local mode (it warns above it); its worst-case layout is skipped beyond.
LOCAL_MODE_LIMIT = 20_000
TARGET_P50_MS, TARGET_P95_MS = 8.0, 15.0


# --- the corpus ------------------------------------------------------------------------------------


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
    store: Any, pool: Pool, total: int, layout: Layout, *, seed: int = 1, batch: int = 512
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
    return stats


# --- measurements ----------------------------------------------------------------------------------


@dataclass
class Latency:
    total: list[float] = field(default_factory=list)
    embed: list[float] = field(default_factory=list)
    search: list[float] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)
    first_pass: list[float] = field(default_factory=list)
    load_average: float = float("nan")  # 1-minute load average of the machine when the cell ended

    @property
    def rest(self) -> list[float]:
        return [t - e - s for t, e, s in zip(self.total, self.embed, self.search, strict=True)]

    @property
    def embed_share(self) -> float:
        return sum(self.embed) / sum(self.total) if self.total else float("nan")


async def measure_recall(
    service: BenchService,
    embedder: TimedEmbedder,
    store: TimedStore,
    texts: Sequence[str],
    subjects: int,
    *,
    max_queries: int,
    max_seconds: float,
    passes: int = 2,
    warmup: int = 2,
) -> Latency:
    """Recall + render for each query (one subject each, spread over the layout), ``passes`` times over
    the same queries; each pass stops after ``max_queries`` or ``max_seconds`` (at least 3 samples).

    The last pass is the one reported: the first one after a load or an optimize() runs while the
    store's new segments are still being paged in, and is kept apart as ``first_pass``.
    """
    settings = service.settings

    async def one(i: int, text: str) -> tuple[float, float, float, int]:
        embedder.query_times.clear()
        store.query_times.clear()
        started = time.perf_counter()
        asker = Owner.of(SECRET, TENANT, subject_name((i * 7907) % subjects))
        found = await service.of(asker).recall(text, now=NOW)
        block = render_block(found, budget_tokens=settings.memory_block_tokens, max_chars=settings.memory_line_chars)
        return time.perf_counter() - started, sum(embedder.query_times), sum(store.query_times), block.count

    for i in range(warmup):  # first-call costs of the Python side, not the store's
        await one(i, f"warm-up question number {i}")
    out = Latency()
    for number in range(passes):
        run = Latency()
        deadline = time.perf_counter() + max_seconds
        for i, text in enumerate(texts[:max_queries]):
            total, embed, search, count = await one(i, text)
            run.total.append(total)
            run.embed.append(embed)
            run.search.append(search)
            run.returned.append(count)
            if time.perf_counter() > deadline and len(run.total) >= min(3, max_queries):
                break
        if number == 0 and passes > 1:
            out.first_pass = run.total
        out.total, out.embed, out.search, out.returned = run.total, run.embed, run.search, run.returned
    out.load_average = os.getloadavg()[0]
    return out


@dataclass
class Writes:
    seconds: list[float] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.seconds) / sum(self.seconds) if self.seconds else float("nan")


async def measure_remember(
    service: BenchService, texts: Sequence[str], subject: str, *, max_writes: int, max_seconds: float
) -> Writes:
    """``remember`` one text at a time (as the extraction worker does) into an existing subject."""
    out = Writes()
    deadline = time.perf_counter() + max_seconds
    for text in texts[:max_writes]:
        started = time.perf_counter()
        _, action = await service.of(Owner.of(SECRET, TENANT, subject)).remember(text, now=NOW)
        out.seconds.append(time.perf_counter() - started)
        out.actions[action] = out.actions.get(action, 0) + 1
        if time.perf_counter() > deadline:
            break
    return out


@dataclass
class Cell:
    backend: str
    size: int
    layout: Layout
    load: LoadStats
    latency: dict[str, Latency]  # phase ("as loaded", "optimized") -> samples
    writes: Writes


def open_store(backend: str, workdir: Path, dim: int, name: str) -> Any:
    if backend == "edge":
        from proxy.memory.store_edge import EdgeStore

        return EdgeStore(workdir / name, dim=dim, collection=name)
    if backend == "qdrant-local":
        from qdrant_client import AsyncQdrantClient

        from proxy.memory.store_qdrant import QdrantStore

        return QdrantStore(AsyncQdrantClient(location=":memory:"), collection=name, dim=dim, owns_client=True)
    raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


async def measure_cell(
    backend: str,
    size: int,
    layout: Layout,
    pool: Pool,
    embedder: LocalEmbedder,
    settings: Settings,
    workdir: Path,
    query_texts: Sequence[str],
    write_texts: Sequence[str],
    *,
    max_queries: int,
    max_seconds: float,
    max_writes: int,
    say: Callable[[str], None],
) -> Cell:
    name = f"{backend}-{size}-{layout.subjects}"
    timed_embedder = TimedEmbedder(embedder)
    store = TimedStore(open_store(backend, workdir, embedder.dim, name))
    service = BenchService(store, timed_embedder, settings)
    await service.start()
    try:
        say(f"{backend}: loading {size:,} memories ({layout.name}) ...")
        load = await bulk_load(store, pool, size, layout)
        latency: dict[str, Latency] = {}
        phases = ["as loaded"]
        if backend == "edge":
            phases.append("optimized")
        for phase in phases:
            if phase == "optimized":
                say(f"{backend}: optimize() ...")
                started = time.perf_counter()
                await store.inner.optimize()
                load.optimize_seconds = time.perf_counter() - started
            say(f"{backend}: recall, {phase} ...")
            latency[phase] = await measure_recall(
                service,
                timed_embedder,
                store,
                query_texts,
                layout.subjects,
                max_queries=max_queries,
                max_seconds=max_seconds,
                passes=2 if backend == "edge" else 1,
            )
        say(f"{backend}: remember ...")
        writes = await measure_remember(
            service, write_texts, subject_name(0), max_writes=max_writes, max_seconds=max_seconds
        )
    finally:
        await service.aclose()
        await store.inner.close()
    return Cell(backend, size, layout, load, latency, writes)


# --- the report ------------------------------------------------------------------------------------


def backend_label(backend: str) -> str:
    return "qdrant local*" if backend == "qdrant-local" else backend


def latency_rows(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        for phase, lat in cell.latency.items():
            rows.append(
                [
                    backend_label(cell.backend),
                    f"{cell.size:,}",
                    cell.layout.name,
                    phase,
                    str(len(lat.total)),
                    ms_percentile(lat.first_pass, 50),
                    ms_percentile(lat.total, 50),
                    ms_percentile(lat.total, 95),
                    ms_percentile(lat.total, 99),
                    ms_percentile(lat.embed, 50),
                    ms_percentile(lat.search, 50),
                    ms_percentile(lat.rest, 50),
                    f"{lat.embed_share * 100:.0f}%",
                    f"{statistics.fmean(lat.returned):.1f}" if lat.returned else "-",
                    f"{lat.load_average:.1f}",
                ]
            )
    return rows


def write_rows(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        w = cell.writes
        rows.append(
            [
                backend_label(cell.backend),
                f"{cell.size:,}",
                cell.layout.name,
                f"{cell.load.rate:,.0f}",
                f"{cell.load.upsert_seconds:.1f}",
                f"{cell.load.optimize_seconds:.1f}" if cell.load.optimize_seconds is not None else "-",
                f"{w.rate:.1f}",
                str(len(w.seconds)),
                ms_percentile(w.seconds, 50),
                ", ".join(f"{k} {v}" for k, v in sorted(w.actions.items())),
            ]
        )
    return rows


def verdict(cells: Sequence[Cell]) -> list[str]:
    out = []
    for cell in cells:
        if cell.backend != "edge" or cell.size != 100_000:
            continue
        for phase, lat in cell.latency.items():
            if len(lat.total) < 20:
                continue
            p50, p95 = percentile(lat.total, 50) * 1000, percentile(lat.total, 95) * 1000
            ok = p50 <= TARGET_P50_MS and p95 <= TARGET_P95_MS
            out.append(
                f"target at 100k, embedded backend ({cell.layout.name}, {phase}): p50 {p50:.1f} ms (<= {TARGET_P50_MS:g}), "
                f"p95 {p95:.1f} ms (<= {TARGET_P95_MS:g}): {'met' if ok else 'NOT met'}"
            )
    return out


def report(cells: Sequence[Cell], pool: Pool, settings: Settings, started: float) -> None:
    print_table(
        "memproxy bench recall: recall path latency, ms (embed query + hybrid search + scoring + render the block)",
        [
            "backend",
            "memories",
            "layout",
            "index",
            "n",
            "p50 1st",
            "p50",
            "p95",
            "p99",
            "embed p50",
            "search p50",
            "rest p50",
            "embed %",
            "in block",
            "load",
        ],
        latency_rows(cells),
        caption="* qdrant local = qdrant-client's local mode (location=':memory:'): the server backend's code path, but "
        "search runs in Python, brute force. It is NOT a Qdrant server; its figures say nothing about one. "
        "'1 subject' = worst case, every memory in one subject.",
    )
    print_table(
        "writes",
        [
            "backend",
            "memories",
            "layout",
            "bulk load mem/s",
            "bulk load s",
            "optimize s",
            "remember/s",
            "n",
            "remember p50 ms",
            "remember outcome",
        ],
        write_rows(cells),
        caption="bulk load = store.upsert of precomputed vectors (no embedding); remember = MemoryService.remember, one at a "
        "time: exact-dedupe lookup, embed the text, near-duplicate query, upsert.",
    )
    rate = len(pool.texts) / pool.embed_seconds if pool.embed_seconds > 0 else float("inf")
    notes = [
        *verdict(cells),
        (
            f"corpus: {len(pool.texts):,} distinct {pool.source} embedded once with {settings.embed_model} "
            f"({pool.embed_seconds:.1f} s, {rate:.0f} texts/s: a bulk import that embeds is bound by this rate); "
            f"memory i reuses a pool sentence and its vector + gaussian noise (sigma {NOISE} per dim, cosine ~0.96), "
            "so texts repeat across subjects and, once a subject holds more memories than the pool, inside one."
        ),
        (
            f"queries: {pool.query_source}, embedded on every call (query cache off); one subject per "
            "query, spread over the layout. 'n' = samples (each cell and pass stops after --queries or --seconds); "
            "p95 needs >= 20 and p99 >= 100 samples, else '-'."
        ),
        (
            "embed = embedding the query, search = the store's hybrid query, rest = everything else in recall + render "
            "(confidence scoring, the block); embed % = embedding's share of the total time."
        ),
        (
            f"service settings: top_k {settings.memory_top_k}, {settings.memory_candidates} candidates per retriever, "
            f"block budget {settings.memory_block_tokens} tokens; 'in block' = memories rendered per recall (after the "
            "similarity and confidence floors). Access-count write-back is off during the run (a background task in "
            "the proxy)."
        ),
        (
            "'as loaded' = right after the bulk upsert (the proxy never calls optimize() itself); 'optimized' = after "
            "EdgeStore.optimize() built the HNSW index and merged segments. Edge cells run the queries twice and report "
            "the second pass; 'p50 1st' is the first pass's p50, while the store's fresh segments are still paged in."
        ),
        (
            f"qdrant local above {LOCAL_MODE_LIMIT:,} memories (where qdrant-client itself warns against local mode) is "
            "measured in the spread layout only: it scans every point in Python whatever the layout."
        ),
        (
            "'load' = the machine's 1-minute load average when the cell ended (2 cores: above ~2, other work was "
            "competing for the CPU during that cell)."
        ),
        "machine: 2 cores shared with other engineers' test runs while measured: figures are noisy, compare within one run.",
        f"run time {time.perf_counter() - started:.0f} s.",
    ]
    print_notes(notes)


def parse_sizes(text: str) -> list[int]:
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


async def measure(
    *,
    sizes: Sequence[int],
    backends: Sequence[str],
    subjects: int,
    worst_case: bool,
    pool_size: int,
    max_queries: int,
    max_seconds: float,
    max_writes: int,
    embedder: LocalEmbedder,
    settings: Settings,
    workdir: Path,
    data: Path | None = None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[list[Cell], Pool]:
    if data is not None:
        from proxy.bench.locomo import load_locomo

        dataset = load_locomo(data)
        texts = list(dict.fromkeys(t.memory_text() for c in dataset.conversations for t in c.turns))[:pool_size]
        asked = list(dict.fromkeys(q.question for c in dataset.conversations for q in c.questions))
        source = f"LoCoMo turns from {data.name}"
    else:
        texts, asked, source = fact_pool(pool_size), [], "generated fact sentences"
    need = 5 + max_queries
    asked = (asked + queries(max(need, 1)))[:need]
    write_texts = notes(max(max_writes, 1))
    say(f"embedding a pool of {len(texts):,} {source} ...")
    pool = await make_pool(embedder, texts, source, cache_dir)
    if data is not None:
        pool.query_source = f"the questions of {data.name} (then template messages)"
    cells = []
    layouts = [Layout(f"{subjects:,} subjects", subjects)]
    if worst_case:
        layouts.append(Layout("1 subject", 1))
    for size in sizes:
        for backend in backends:
            for index, layout in enumerate(layouts):
                if index > 0 and backend == "qdrant-local" and size > LOCAL_MODE_LIMIT:
                    continue  # brute force over every point either way: a second layout says nothing more
                n = min(layout.subjects, size)
                layout_here = layout if n == layout.subjects else Layout(f"{n:,} subjects", n)
                cells.append(
                    await measure_cell(
                        backend,
                        size,
                        layout_here,
                        pool,
                        embedder,
                        settings,
                        workdir,
                        asked,
                        write_texts,
                        max_queries=max_queries,
                        max_seconds=max_seconds,
                        max_writes=max_writes,
                        say=say,
                    )
                )
    return cells, pool


def run(
    *,
    sizes: Sequence[int],
    backends: Sequence[str],
    subjects: int = 1000,
    worst_case: bool = True,
    pool_size: int = 2000,
    max_queries: int = 200,
    max_seconds: float = 5.0,
    max_writes: int = 100,
    model_path: Path | None = None,
    data: Path | None = None,
    cache_dir: Path | None = None,
) -> None:
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memproxy-recall-") as tmp, warnings.catch_warnings():
        # qdrant-client warns that local mode is slow past 20k points: the table's caption says so already
        warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)
        settings = bench_settings(Path(tmp))
        embedder = load_embedder(settings, model_path, cache_size=0)
        try:
            cells, pool = asyncio.run(
                measure(
                    sizes=sizes,
                    backends=backends,
                    subjects=subjects,
                    worst_case=worst_case,
                    pool_size=pool_size,
                    max_queries=max_queries,
                    max_seconds=max_seconds,
                    max_writes=max_writes,
                    embedder=embedder,
                    settings=settings,
                    workdir=Path(tmp),
                    data=data,
                    cache_dir=cache_dir,
                    say=lambda m: print(m, flush=True),
                )
            )
        finally:
            embedder.close()
    report(cells, pool, settings, started)
