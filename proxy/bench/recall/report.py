"""The report of ``bench recall``: the latency and write tables, the verdict on the target, the notes,
and the command."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proxy.bench.harness import ms_percentile, percentile, print_notes, print_table
from proxy.bench.membench import bench_settings, load_embedder
from proxy.bench.recall.data import NOISE, Pool
from proxy.bench.recall.evaluate import BACKENDS, LOCAL_MODE_LIMIT, Cell, Plan, Progress, measure, unknown_backend
from proxy.config import Settings

TARGET_P50_MS, TARGET_P95_MS = 5.0, 10.0
TARGET_SIZES = (1_000, 100_000)
TARGET_RPS = 400.0

LATENCY_COLUMNS = [
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
    "score p50",
    "render p50",
    "rewrite p50",
    "in block",
    "load",
]
WRITE_COLUMNS = [
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
]


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
                    ms_percentile(lat.score, 50),
                    ms_percentile(lat.render, 50),
                    ms_percentile(lat.rewrite, 50),
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


THROUGHPUT_COLUMNS = [
    "backend",
    "memories",
    "layout",
    "index",
    "concurrency",
    "n",
    "recalls/s",
    "CPU ms/recall",
    "p50",
    "p95",
    "embed batch",
]
FOOTPRINT_COLUMNS = [
    "backend",
    "memories",
    "layout",
    "RSS started MB",
    "RSS loaded MB",
    "RSS end MB",
    "of it anon MB",
    "added MB",
    "KB/memory",
    "reopened: open MB",
    "after recalls MB",
    "of it anon MB",
    "KB/memory",
]


def throughput_rows(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        for phase, run in cell.throughput.items():
            rows.append(
                [
                    backend_label(cell.backend),
                    f"{cell.size:,}",
                    cell.layout.name,
                    phase,
                    str(run.concurrency),
                    str(len(run.latency)),
                    f"{run.rate:,.0f}",
                    f"{run.cpu_ms:.2f}",
                    ms_percentile(run.latency, 50),
                    ms_percentile(run.latency, 95),
                    f"{run.mean_batch:.1f}",
                ]
            )
    return rows


def footprint_rows(cells: Sequence[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        added = cell.rss_end_mb - cell.rss_started_mb
        again = cell.reopened
        rows.append(
            [
                backend_label(cell.backend),
                f"{cell.size:,}",
                cell.layout.name,
                f"{cell.rss_started_mb:,.0f}",
                f"{cell.rss_loaded_mb:,.0f}",
                f"{cell.rss_end_mb:,.0f}",
                f"{cell.rss_end_anon_mb:,.0f}",
                f"{added:,.0f}",
                f"{added * 1024 / cell.size:.2f}",
                *(
                    [
                        f"{again.opened.rss_mb:,.0f}",
                        f"{again.recalled.rss_mb:,.0f}",
                        f"{again.recalled.anon_mb:,.0f}",
                        f"{again.recalled.rss_mb * 1024 / cell.size:.2f}",
                    ]
                    if again is not None
                    else ["-"] * 4
                ),
            ]
        )
    return rows


def verdict(cells: Sequence[Cell]) -> list[str]:
    out = []
    for cell in cells:
        if cell.backend != "edge" or cell.size not in TARGET_SIZES:
            continue
        for phase, lat in cell.latency.items():
            if len(lat.total) < 20:
                continue
            p50, p95 = percentile(lat.total, 50) * 1000, percentile(lat.total, 95) * 1000
            ok = p50 <= TARGET_P50_MS and p95 <= TARGET_P95_MS
            out.append(
                f"target at {cell.size:,}, embedded backend ({cell.layout.name}, {phase}): p50 {p50:.1f} ms "
                f"(<= {TARGET_P50_MS:g}), p95 {p95:.1f} ms (<= {TARGET_P95_MS:g}): {'met' if ok else 'NOT met'}"
            )
        for phase, run in cell.throughput.items():
            out.append(
                f"throughput at {cell.size:,} ({cell.layout.name}, {phase}), c={run.concurrency}: {run.rate:,.0f} "
                f"recalls/s in-process (>= {TARGET_RPS:g} through the proxy is the goal; this is the recall path alone)"
            )
    return out


def notes(cells: Sequence[Cell], pool: Pool, settings: Settings, started: float) -> list[str]:
    """The verdict on the target, then what the tables do not say: the corpus, the queries, the columns,
    the service's settings, the phases, the machine, and the run time since ``started``."""
    rate = len(pool.texts) / pool.embed_seconds if pool.embed_seconds > 0 else float("inf")
    return [
        *verdict(cells),
        *(
            f"reopened {cell.size:,} memories ({cell.layout.name}) in a fresh process: {cell.reopened.recalls} "
            f"recalls returned {cell.reopened.hits:,} memories; resident after them: "
            f"{cell.reopened.recalled.anon_mb:,.0f} MB anonymous, then file pages: "
            + ", ".join(
                f"{name} {mb:,.0f} MB" for name, mb in sorted(cell.reopened.parts_mb.items(), key=lambda kv: -kv[1])
            )
            + "."
            for cell in cells
            if cell.reopened is not None
        ),
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
            "embed = embedding the query, search = the store's hybrid query and the pinned kinds' nearest, "
            "in one call (candidates with their clear fields, cosines and BM25 weights, not opened), score = the rest of recall (BM25 query terms, confidence, checks, opening the memories "
            "returned), render = the block, rewrite = injecting it into a chat completion body and encoding that "
            "(proxy.hooks)."
        ),
        (
            f"service settings: top_k {settings.memory_top_k}, {settings.memory_candidates} candidates per retriever, "
            f"block budget {settings.memory_block_tokens} tokens; 'in block' = memories rendered per recall (after the "
            "similarity and confidence floors). Access-count write-back is off during the run (a background task in "
            "the proxy)."
        ),
        (
            "'as loaded' = right after the bulk upsert; 'optimized' = after EdgeStore.optimize_apart() built the HNSW "
            "index and merged segments, as a serving proxy does once MEMPROXY_EDGE_OPTIMIZE_AFTER points wait (Edge's "
            "optimize() in a child process; 'optimize s' = the store closed for it). Edge cells run the queries twice "
            "and report the second pass; 'p50 1st' is the first pass's p50, while the store's fresh segments are "
            "still paged in."
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


def report(cells: Sequence[Cell], pool: Pool, settings: Settings, started: float, *, rss: bool = False) -> None:
    print_table(
        "memproxy bench recall: recall path latency at c=1, ms (embed + search + score + render + body rewrite)",
        LATENCY_COLUMNS,
        latency_rows(cells),
        caption="* qdrant local = qdrant-client's local mode (location=':memory:'): the server backend's code path, but "
        "search runs in Python, brute force. It is NOT a Qdrant server; its figures say nothing about one. "
        "'1 subject' = worst case, every memory in one subject.",
    )
    print_table(
        "writes",
        WRITE_COLUMNS,
        write_rows(cells),
        caption="bulk load = store.upsert of precomputed vectors (no embedding); remember = MemoryService.remember, one at a "
        "time: exact-dedupe lookup, embed the text, near-duplicate query, upsert.",
    )
    if any(cell.throughput for cell in cells):
        print_table(
            "recalls at concurrency (recall + render + rewrite, distinct questions, in this process)",
            THROUGHPUT_COLUMNS,
            throughput_rows(cells),
            caption="CPU ms/recall = this process's CPU time (all threads) / recalls; embed batch = queries per embedding "
            "batch (the micro-batcher: queries that arrive while the model is busy go together).",
        )
    if rss:
        print_table(
            "memory footprint of this process (VmRSS)",
            FOOTPRINT_COLUMNS,
            footprint_rows(cells),
            caption="started = model loaded and store open, before the load; end = after the recalls; added = end - "
            "started; anon = anonymous memory (heap), the rest is mostly the store's memory-mapped files. reopened = "
            "what the closed store adds to a fresh process that opens it (as the proxy does on every start), once "
            "open and after one recall in each of --queries subjects (embedded store). Measure one size per run "
            "(--sizes 1M --backends edge --no-worst-case --rss): freed memory is not always given back, so a later "
            "cell inherits an earlier one's high-water mark.",
        )
    print_notes(notes(cells, pool, settings, started))


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A progress bar per stage on stderr (load, recalls), gone when the stage ends."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    with Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bars:
        current: list[Any] = []

        def start(label: str, total: int) -> Callable[[int], None]:
            for task in current:  # one stage at a time
                bars.remove_task(task)
            current[:] = [bars.add_task(label, total=total)]
            task = current[0]
            return lambda n: bars.advance(task, n)

        yield start


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
    concurrency: int = 0,
    optimize: bool = True,
    rss: bool = False,
    model_path: Path | None = None,
    data: Path | None = None,
    cache_dir: Path | None = None,
) -> None:
    """``memproxy bench recall``: measure every cell with the real embedder, print the report."""
    for backend in backends:
        if backend not in BACKENDS:
            raise unknown_backend(backend)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="memproxy-recall-") as tmp,
        warnings.catch_warnings(),
        progress_bar() as progress,
    ):
        # qdrant-client warns that local mode is slow past 20k points: the table's caption says so already
        warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)
        settings = bench_settings(Path(tmp))
        embedder = load_embedder(settings, model_path, cache_size=0)
        plan = Plan(
            max_queries=max_queries,
            max_seconds=max_seconds,
            max_writes=max_writes,
            concurrency=concurrency,
            optimize=optimize,
            rss=rss,
            say=lambda m: print(m, file=sys.stderr, flush=True),
            progress=progress,
        )
        try:
            cells, pool = asyncio.run(
                measure(
                    sizes=sizes,
                    backends=backends,
                    subjects=subjects,
                    worst_case=worst_case,
                    pool_size=pool_size,
                    plan=plan,
                    embedder=embedder,
                    settings=settings,
                    workdir=Path(tmp),
                    data=data,
                    cache_dir=cache_dir,
                )
            )
        finally:
            embedder.close()
    report(cells, pool, settings, started, rss=rss)
