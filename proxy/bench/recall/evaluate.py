"""The measurements of ``bench recall``: per backend, store size and layout, the latency of recall +
render (as loaded, and optimized for the embedded store) and the rate of ``remember``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from proxy.bench.corpus import notes, queries
from proxy.bench.harness import memory_mb, rss_mb
from proxy.bench.membench import BenchService, TimedEmbedder, TimedStore
from proxy.bench.recall.data import (
    NOW,
    SECRET,
    TENANT,
    Layout,
    LoadStats,
    Pool,
    bulk_load,
    make_pool,
    pool_texts,
    subject_name,
)
from proxy.bench.recall.reopen import Reopened, bench_sealer, measure_reopen
from proxy.config import Settings
from proxy.hooks.chat import inject
from proxy.hooks.recall import encode
from proxy.memory.embed import LocalEmbedder
from proxy.memory.render import render_block
from proxy.memory.sealing import Sealer
from proxy.memory.store import MemoryStore
from proxy.owner import Owner

BACKENDS = ("edge", "qdrant-local")
#: qdrant-client's own limit for local mode (it warns above it); its worst-case layout is skipped beyond.
LOCAL_MODE_LIMIT = 20_000


Progress = Callable[[str, int], Callable[[int], None]]
"""``start(label, total)`` -> ``advance(n)``: the command's progress bar (tests pass none)."""


def no_progress(_label: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


#: The request a recalled block is injected into (a chat completion with a system message), as the hook does.
REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}],
}


@dataclass
class Latency:
    total: list[float] = field(default_factory=list)
    embed: list[float] = field(default_factory=list)
    search: list[float] = field(default_factory=list)
    render: list[float] = field(default_factory=list)
    rewrite: list[float] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)
    first_pass: list[float] = field(default_factory=list)
    load_average: float = float("nan")  # 1-minute load average of the machine when the cell ended

    @property
    def score(self) -> list[float]:
        """What recall spends besides embedding and searching: BM25 query terms, confidence, the checks."""
        parts = zip(self.total, self.embed, self.search, self.render, self.rewrite, strict=True)
        return [t - e - s - r - w for t, e, s, r, w in parts]


@dataclass
class Sample:
    total: float
    render: float
    rewrite: float
    count: int


async def recall_once(service: BenchService, subjects: int, i: int, text: str) -> Sample:
    """What the proxy does with a question before forwarding: recall, render the block, inject it and
    encode the request body (``proxy.hooks``), timed end to end and per stage."""
    settings = service.settings
    started = time.perf_counter()
    asker = Owner.of(SECRET, TENANT, subject_name((i * 7907) % subjects))
    found = await service.of(asker).recall(text, now=NOW)
    recalled = time.perf_counter()
    block = render_block(found, budget_tokens=settings.memory_block_tokens, max_chars=settings.memory_line_chars)
    rendered = time.perf_counter()
    messages = [*REQUEST["messages"], {"role": "user", "content": text}]
    encode({**REQUEST, "messages": inject(messages, block.text)})
    done = time.perf_counter()
    return Sample(done - started, rendered - recalled, done - rendered, block.count)


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
    advance: Callable[[int], None] = lambda _n: None,
) -> Latency:
    """Recall + render + body rewrite for each query, one at a time (one subject each, spread over the
    layout), ``passes`` times over the same queries; each pass stops after ``max_queries`` or
    ``max_seconds`` (at least 3 samples).

    The last pass is the one reported: the first one after a load or an optimize() runs while the
    store's new segments are still being paged in, and is kept apart as ``first_pass``.
    """
    for i in range(warmup):  # first-call costs of the Python side, not the store's
        await recall_once(service, subjects, i, f"warm-up question number {i}")
    out = Latency()
    for number in range(passes):
        run = Latency()
        deadline = time.perf_counter() + max_seconds
        for i, text in enumerate(texts[:max_queries]):
            embedder.query_times.clear()
            store.query_times.clear()
            sample = await recall_once(service, subjects, i, text)
            advance(1)
            run.total.append(sample.total)
            run.embed.append(sum(embedder.query_times))
            run.search.append(sum(store.query_times))
            run.render.append(sample.render)
            run.rewrite.append(sample.rewrite)
            run.returned.append(sample.count)
            if time.perf_counter() > deadline and len(run.total) >= min(3, max_queries):
                break
        if number == 0 and passes > 1:
            out.first_pass = run.total
        out.total, out.embed, out.search, out.returned = run.total, run.embed, run.search, run.returned
        out.render, out.rewrite = run.render, run.rewrite
    out.load_average = os.getloadavg()[0]
    return out


@dataclass
class Throughput:
    """Recalls run ``concurrency`` at a time, as concurrent requests would."""

    concurrency: int
    latency: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the whole process's CPU time (every thread) over the run
    batches: int = 0  # embedding batches, and the queries they held
    batched: int = 0

    @property
    def rate(self) -> float:
        return len(self.latency) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / len(self.latency) * 1000 if self.latency else float("nan")

    @property
    def mean_batch(self) -> float:
        return self.batched / self.batches if self.batches else float("nan")


async def measure_throughput(
    service: BenchService,
    embedder: LocalEmbedder,
    texts: Sequence[str],
    subjects: int,
    concurrency: int,
    *,
    max_seconds: float,
    advance: Callable[[int], None] = lambda _n: None,
) -> Throughput:
    """``concurrency`` workers taking the next question until ``texts`` or ``max_seconds`` run out."""
    out = Throughput(concurrency)
    pending = iter(enumerate(texts))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        for i, text in pending:
            out.latency.append((await recall_once(service, subjects, i, text)).total)
            advance(1)
            if time.perf_counter() > deadline:
                return

    batches, batched = embedder.batches, embedder.batched_queries
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.seconds, out.cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    out.batches, out.batched = embedder.batches - batches, embedder.batched_queries - batched
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
    throughput: dict[str, Throughput] = field(default_factory=dict)  # phase -> recalls at --concurrency
    rss_started_mb: float = 0.0  # this process's resident memory with the model loaded and the store open
    rss_loaded_mb: float = 0.0  # after the bulk load
    rss_end_mb: float = 0.0  # after the recalls (and optimize())
    rss_end_anon_mb: float = 0.0  # of it, anonymous memory (the rest: mostly the store's memory-mapped files)
    reopened: Reopened | None = None  # the store's share of a fresh process that opens it (--rss, embedded store)


def unknown_backend(backend: str) -> ValueError:
    return ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def open_store(backend: str, workdir: Path, dim: int, name: str) -> Any:
    if backend == "edge":
        from proxy.memory.store_edge import EdgeStore

        return EdgeStore(workdir / name, dim=dim, sealer=bench_sealer(), collection=name)
    if backend == "qdrant-local":
        from qdrant_client import AsyncQdrantClient

        from proxy.memory.store_qdrant import QdrantStore

        client = AsyncQdrantClient(location=":memory:")
        return QdrantStore(client, collection=name, dim=dim, sealer=Sealer.ephemeral(), owns_client=True)
    raise unknown_backend(backend)


@dataclass
class Plan:
    """How each cell is measured (the command's options)."""

    max_queries: int
    max_seconds: float
    max_writes: int
    concurrency: int = 0  # 0: no throughput run
    optimize: bool = True
    rss: bool = False  # also open each embedded store afresh in a child process and read its memory
    say: Callable[[str], None] = lambda _m: None
    progress: Progress = no_progress


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
    plan: Plan,
) -> Cell:
    name = f"{backend}-{size}-{layout.subjects}"
    timed_embedder = TimedEmbedder(embedder)
    store = TimedStore(open_store(backend, workdir, embedder.dim, name))
    service = BenchService(cast(MemoryStore, store), timed_embedder, settings)  # a timing proxy of one
    await service.start()
    cell = Cell(backend, size, layout, LoadStats(size), {}, Writes(), rss_started_mb=rss_mb(os.getpid()))
    try:
        cell.load = await bulk_load(
            store, pool, size, layout, advance=plan.progress(f"{backend}: load {size:,} ({layout.name})", size)
        )
        cell.rss_loaded_mb = rss_mb(os.getpid())
        phases = ["as loaded"]
        if backend == "edge" and plan.optimize:
            phases.append("optimized")
        passes = 2 if backend == "edge" else 1
        for phase in phases:
            if phase == "optimized":
                plan.say(f"{backend}: optimize, as the proxy does (a child process) ...")
                started = time.perf_counter()
                await store.inner.optimize_apart()
                cell.load.optimize_seconds = time.perf_counter() - started
            queries = min(plan.max_queries, len(query_texts))
            cell.latency[phase] = await measure_recall(
                service,
                timed_embedder,
                store,
                query_texts,
                layout.subjects,
                max_queries=plan.max_queries,
                max_seconds=plan.max_seconds,
                passes=passes,
                advance=plan.progress(f"{backend}: recall, {phase}, c=1", queries * passes),
            )
            if plan.concurrency > 0:
                texts = query_texts[queries:]  # questions not asked yet
                cell.throughput[phase] = await measure_throughput(
                    service,
                    embedder,
                    texts,
                    layout.subjects,
                    plan.concurrency,
                    max_seconds=plan.max_seconds,
                    advance=plan.progress(f"{backend}: recall, {phase}, c={plan.concurrency}", len(texts)),
                )
                timed_embedder.query_times.clear()
                store.query_times.clear()
        end = memory_mb(os.getpid())
        cell.rss_end_mb, cell.rss_end_anon_mb = end["VmRSS"], end["RssAnon"]
        if plan.max_writes > 0:
            plan.say(f"{backend}: remember ...")
            cell.writes = await measure_remember(
                service, write_texts, subject_name(0), max_writes=plan.max_writes, max_seconds=plan.max_seconds
            )
    finally:
        await service.aclose()
        await store.inner.close()
    if plan.rss and backend == "edge":
        plan.say(f"{backend}: reopen in a fresh process ...")
        sealer = store.inner.sealer
        cell.reopened = await asyncio.to_thread(
            measure_reopen, workdir / name, embedder.dim, sealer, pool, layout.subjects, plan.max_queries
        )
    return cell


def cells_to_measure(
    sizes: Sequence[int], backends: Sequence[str], subjects: int, worst_case: bool
) -> Iterator[tuple[str, int, Layout]]:
    """(backend, size, layout) of every cell, in the order they are measured: memories spread over
    ``subjects`` (fewer when the store is smaller), then all in one subject if ``worst_case``."""
    layouts = [Layout(f"{subjects:,} subjects", subjects)]
    if worst_case:
        layouts.append(Layout("1 subject", 1))
    for size in sizes:
        for backend in backends:
            for index, layout in enumerate(layouts):
                if index > 0 and backend == "qdrant-local" and size > LOCAL_MODE_LIMIT:
                    continue  # brute force over every point either way: a second layout says nothing more
                n = min(layout.subjects, size)
                yield backend, size, layout if n == layout.subjects else Layout(f"{n:,} subjects", n)


async def measure(
    *,
    sizes: Sequence[int],
    backends: Sequence[str],
    subjects: int,
    worst_case: bool,
    pool_size: int,
    plan: Plan,
    embedder: LocalEmbedder,
    settings: Settings,
    workdir: Path,
    data: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[Cell], Pool]:
    texts, asked, source = pool_texts(pool_size, data)
    # distinct questions: the sequential passes', then fresh ones for the throughput run
    need = 5 + plan.max_queries + (max(plan.max_queries, 4 * plan.concurrency) if plan.concurrency else 0)
    asked = (asked + queries(max(need, 1)))[:need]
    write_texts = notes(max(plan.max_writes, 1))
    plan.say(f"embedding a pool of {len(texts):,} {source} ...")
    pool = await make_pool(embedder, texts, source, cache_dir)
    if data is not None:
        pool.query_source = f"the questions of {data.name} (then template messages)"
    cells = []
    for backend, size, layout in cells_to_measure(sizes, backends, subjects, worst_case):
        cells.append(
            await measure_cell(backend, size, layout, pool, embedder, settings, workdir, asked, write_texts, plan)
        )
    return cells, pool
