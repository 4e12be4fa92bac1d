"""``memproxy bench recall`` at tiny sizes: the corpus it builds, what it measures, the table it prints."""

from __future__ import annotations

import time

import numpy as np
import pytest
from typer.testing import CliRunner

from proxy.bench.corpus import fact_pool, notes, queries
from proxy.bench.harness import ms_percentile, pct
from proxy.bench.membench import BenchService, bench_settings
from proxy.bench.recall import parse_sizes
from proxy.bench.recall.data import NOW, SECRET, TENANT, Layout, bulk_load, make_pool, shares, subject_name
from proxy.bench.recall.evaluate import Plan, measure, open_store
from proxy.bench.recall.report import report
from proxy.owner import Owner


def owner(tenant: str, subject: str) -> Owner:
    """An owner as the benchmark makes them: under the benchmark's own secret."""
    return Owner.of(SECRET, tenant, subject)


def test_sizes_read_like_people_write_them():
    assert parse_sizes("10k,100k") == [10_000, 100_000]
    assert parse_sizes("1M, 2500, 1.5k") == [1_000_000, 2_500, 1_500]
    for bad in ("", "0", "-5", "lots"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_generated_sentences_are_distinct_and_repeatable():
    pool = fact_pool(500)
    assert len(set(pool)) == 500 and pool == fact_pool(500)
    assert len(set(queries(200))) == 200 and not set(notes(50)) & set(pool)
    assert shares(10, 3) == [4, 3, 3] and sum(shares(100_000, 1000)) == 100_000


def test_store_files_are_told_apart_by_the_part_they_hold():
    from proxy.bench.recall.reopen import part_of

    assert part_of("segments/1f2e/vector_storage-dense/vectors/chunk_0.mmap") == "dense vectors"
    assert part_of("segments/1f2e/vector_storage-bm25/store/page_0.dat") == "BM25 vectors"
    assert part_of("segments/1f2e/payload_index/abc-subject-map/page_0.dat") == "payload indexes"
    assert part_of("segments/1f2e/mutable_id_tracker.mappings") == "id tracker"
    assert part_of("wal/open-3") == "write-ahead log" and part_of("edge_config.json") == "other files"


def test_percentiles_need_enough_samples():
    assert ms_percentile([0.001] * 19, 95) == "-" and ms_percentile([0.001] * 20, 95) == "1.00"
    assert ms_percentile([0.002] * 99, 99) == "-" and ms_percentile([], 50) == "-"
    assert pct(0.5678) == "56.8" and pct(float("nan")) == "-"


@pytest.fixture(scope="module")
async def small_pool(local_embedder):
    return await make_pool(local_embedder, fact_pool(40), "generated fact sentences")


@pytest.mark.parametrize("backend", ["edge", "qdrant-local"])
async def test_bulk_load_spreads_jittered_pool_vectors_that_recall_finds(backend, small_pool, local_embedder, tmp_path):
    store = open_store(backend, tmp_path, local_embedder.dim, "spread")
    service = BenchService(store, local_embedder, bench_settings(tmp_path), owns_store=True)
    await service.start()
    try:
        stats = await bulk_load(store, small_pool, 25, Layout("4 subjects", 4))
        counts = [await store.count(owner(TENANT, subject_name(s))) for s in range(5)]
        assert counts == [7, 6, 6, 6, 0] and stats.memories == 25 and stats.rate > 0
        # subject 0 holds pool sentences 0..6 (its offset is 0); each vector is the pool's plus noise
        memories = (await store.scroll(owner(TENANT, subject_name(0)), limit=10)).memories
        assert sorted(m.text for m in memories) == sorted(small_pool.texts[:7])
        asked = small_pool.texts[3]
        found = await service.of(owner(TENANT, subject_name(0))).recall(
            asked, now=NOW, min_similarity=0.0, min_confidence=0.0
        )
        assert found[0].memory.text == asked
        assert 0.9 < found[0].semantic < 0.999  # jittered, not the pool vector itself
        assert all(NOW.year - 1 <= m.created_at.year <= NOW.year for m in memories)
    finally:
        await service.aclose()


async def test_tiny_run_measures_every_backend_layout_and_index(local_embedder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(local_embedder, "_cache_size", 0)  # as the command runs it: every question embedded
    local_embedder._cache.clear()
    cells, pool = await measure(
        sizes=[120],
        backends=["edge", "qdrant-local"],
        subjects=6,
        worst_case=True,
        pool_size=30,
        plan=Plan(max_queries=6, max_seconds=5, max_writes=3, concurrency=4, rss=True),
        embedder=local_embedder,
        settings=bench_settings(tmp_path),
        workdir=tmp_path,
    )
    assert [(c.backend, c.layout.subjects) for c in cells] == [
        ("edge", 6),
        ("edge", 1),
        ("qdrant-local", 6),
        ("qdrant-local", 1),
    ]
    for cell in cells:
        phases = ["as loaded", "optimized"] if cell.backend == "edge" else ["as loaded"]
        assert list(cell.latency) == phases
        for lat in cell.latency.values():
            assert len(lat.total) == 6 and all(t > e > 0 for t, e in zip(lat.total, lat.embed, strict=True))
            assert len(lat.first_pass) == (6 if cell.backend == "edge" else 0)
            assert all(r > 0 and w > 0 for r, w in zip(lat.render, lat.rewrite, strict=True))
            assert all(-1e-4 < x < t for x, t in zip(lat.score, lat.total, strict=True))  # the stages add up
        assert list(cell.throughput) == phases
        for run in cell.throughput.values():  # distinct questions, 4 at a time, until they run out
            assert run.concurrency == 4 and len(run.latency) >= 6 and run.rate > 0 and run.cpu_ms > 0
            assert run.batched == len(run.latency) and run.batches <= run.batched
        assert 0 < cell.rss_started_mb <= cell.rss_end_mb + 50 and 0 < cell.rss_end_anon_mb < cell.rss_end_mb
        if cell.backend == "edge":  # a fresh process opened the closed store and recalled in each subject
            again = cell.reopened
            assert again is not None and again.recalls == cell.layout.subjects
            n, created = cell.layout.subjects, cell.writes.actions.get("created", 0)  # remember wrote to subject 0
            assert again.hits == min(120 // n + created, 40) + (n - 1) * min(120 // n, 40)
            assert again.recalled.rss_mb >= again.opened.rss_mb > 0
            assert {"dense vectors", "payloads", "payload indexes", "write-ahead log"} <= set(again.parts_mb)
        else:
            assert cell.reopened is None
        assert (cell.load.optimize_seconds is not None) == (cell.backend == "edge")
        assert len(cell.writes.seconds) == 3 and cell.writes.actions.get("created", 0) >= 2
    one_subject = cells[1].latency["optimized"]
    assert np.mean(one_subject.returned) > 0  # 120 memories in one subject: the block is never empty

    report(cells, pool, bench_settings(tmp_path), time.perf_counter(), rss=True)
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # rich wraps long lines
    assert "recall path latency" in flat and "writes" in flat
    assert "recalls at concurrency" in flat and "memory footprint" in flat and "rewrite" in flat
    assert out.count("qdrant local*") >= 4 and "It is NOT a Qdrant server" in flat
    assert "1 subject" in out and "6 subjects" in out and "optimized" in out
    assert "figures are noisy" in flat and "cosine ~0.96" in flat
    assert "reopened 120 memories (6 subjects) in a fresh process: 6 recalls returned" in flat
    assert "MB anonymous, then file pages:" in flat and "write-ahead log" in flat
    assert "target at" not in flat  # the target is judged at 1k and 100k only


def test_the_command_prints_its_tables(memory_model_dir):
    from proxy.cli import app

    result = CliRunner().invoke(
        app,
        [
            "bench",
            "recall",
            "--sizes",
            "60",
            "--backends",
            "edge",
            "--subjects",
            "3",
            "--no-worst-case",
            "--pool",
            "20",
            "--queries",
            "5",
            "--seconds",
            "2",
            "--writes",
            "2",
            "--model-path",
            str(memory_model_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recall path latency" in result.output and "3 subjects" in result.output
    assert "1 subject │" not in result.output  # --no-worst-case: no one-subject rows
    bad = CliRunner().invoke(app, ["bench", "recall", "--sizes", "ten"])
    assert bad.exit_code != 0 and "--sizes" in bad.output
    unknown = CliRunner().invoke(
        app, ["bench", "recall", "--sizes", "10", "--backends", "nope", "--model-path", str(memory_model_dir)]
    )
    assert unknown.exit_code != 0 and "unknown backend" in unknown.output


async def test_local_mode_is_measured_in_one_layout_past_its_own_limit(local_embedder, tmp_path, monkeypatch):
    from proxy.bench.recall import evaluate

    monkeypatch.setattr(evaluate, "LOCAL_MODE_LIMIT", 40)
    cells, _ = await measure(
        sizes=[30, 50],
        backends=["qdrant-local"],
        subjects=5,
        worst_case=True,
        pool_size=20,
        plan=Plan(max_queries=3, max_seconds=2, max_writes=1),
        embedder=local_embedder,
        settings=bench_settings(tmp_path),
        workdir=tmp_path,
    )
    assert [(c.size, c.layout.subjects) for c in cells] == [(30, 5), (30, 1), (50, 5)]


WRK_OUTPUT = """Running 15s test @ http://127.0.0.1:8080
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   150.12ms   20.01ms 400.00ms   70.00%
  Latency Distribution
     50%  145.20ms
     75%  160.00ms
     90%  180.50ms
     99%    1.20s
  6000 requests in 15.00s, 3.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    400.00
"""


def test_recall_load_reads_wrks_report():
    from proxy.bench.recall.load import SCRIPT, parse_wrk

    result = parse_wrk(WRK_OUTPUT)
    assert (result.requests, result.seconds, result.errors) == (6000, 15.0, 7)
    assert result.rate == 400.0 and result.latency_ms == {50: 145.2, 75: 160.0, 90: 180.5, 99: 1200.0}
    with pytest.raises(RuntimeError, match="no summary"):
        parse_wrk("unable to connect to 127.0.0.1:8080 Connection refused")
    assert "counter" in SCRIPT and '"user":"%s"' in SCRIPT  # a different question and user on every request
