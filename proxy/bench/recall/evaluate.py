"""The measurements of ``bench recall``: per backend, store size and layout, the latency of recall +
render (as loaded, and optimized for the embedded store) and the rate of ``remember``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from proxy.bench.corpus import notes, queries
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
from proxy.config import Settings
from proxy.memory.embed import LocalEmbedder
from proxy.memory.render import render_block
from proxy.memory.sealing import Sealer
from proxy.memory.store import MemoryStore
from proxy.owner import Owner

BACKENDS = ("edge", "qdrant-local")
#: qdrant-client's own limit for local mode (it warns above it); its worst-case layout is skipped beyond.
LOCAL_MODE_LIMIT = 20_000


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


def unknown_backend(backend: str) -> ValueError:
    return ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def open_store(backend: str, workdir: Path, dim: int, name: str) -> Any:
    if backend == "edge":
        from proxy.memory.store_edge import EdgeStore

        return EdgeStore(workdir / name, dim=dim, sealer=Sealer.ephemeral(), collection=name)
    if backend == "qdrant-local":
        from qdrant_client import AsyncQdrantClient

        from proxy.memory.store_qdrant import QdrantStore

        client = AsyncQdrantClient(location=":memory:")
        return QdrantStore(client, collection=name, dim=dim, sealer=Sealer.ephemeral(), owns_client=True)
    raise unknown_backend(backend)


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
    service = BenchService(cast(MemoryStore, store), timed_embedder, settings)  # a timing proxy of one
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
    texts, asked, source = pool_texts(pool_size, data)
    need = 5 + max_queries
    asked = (asked + queries(max(need, 1)))[:need]
    write_texts = notes(max(max_writes, 1))
    say(f"embedding a pool of {len(texts):,} {source} ...")
    pool = await make_pool(embedder, texts, source, cache_dir)
    if data is not None:
        pool.query_source = f"the questions of {data.name} (then template messages)"
    cells = []
    for backend, size, layout in cells_to_measure(sizes, backends, subjects, worst_case):
        cells.append(
            await measure_cell(
                backend,
                size,
                layout,
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
