"""The embedded store keeps itself optimized (proxy/memory/upkeep.py, EdgeStore.optimize_apart).

Real Qdrant Edge stores, filled past Edge's indexing threshold (about 6,500 vectors of 384
dimensions per segment) with sealed memories, so ``optimize()`` really builds an HNSW index.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import httpx
import numpy as np
import openai
import pytest
from conftest import owner

from proxy.memory import store_edge
from proxy.memory.models import Memory
from proxy.memory.sealing import Sealer
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store import MemoryPoint, access_payload
from proxy.memory.store_edge import EdgeStore
from proxy.memory.upkeep import Upkeep

DIM = 384
FILL = 7500
"""Memories written: past Edge's indexing threshold, so optimize() builds an HNSW index."""
SUBJECTS = 30
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BM25 = Bm25Encoder()
SEALER = Sealer.ephemeral()
TOPICS = ("tea", "chess", "Lisbon", "bicycles", "jazz", "gardening", "sailing", "Rust", "pottery", "hiking")


def points(subject: int, count: int, *, start: int = 0, seed: int = 0) -> list[MemoryPoint]:
    scope = owner("tenant-a", f"user-{subject}")
    rng = np.random.default_rng(seed * 1000 + subject)
    vectors = rng.normal(size=(count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for i in range(count):
        text = f"fact {start + i}: the user likes {TOPICS[(start + i) % len(TOPICS)]}"
        memory = Memory(tenant=scope.tenant, subject=scope.subject, text=text, created_at=T0, updated_at=T0)
        out.append(MemoryPoint(memory, vectors[i].tolist(), BM25.document(text)))
    return out


async def fill(store: EdgeStore, total: int = FILL, seed: int = 0) -> None:
    each = total // SUBJECTS
    for subject in range(SUBJECTS):
        await store.upsert(owner("tenant-a", f"user-{subject}"), points(subject, each, seed=seed))


async def recall(store: EdgeStore) -> list[list[tuple[str, float]]]:
    """Each of a few subjects' dense and hybrid top 10: ids and scores."""
    rng = np.random.default_rng(7)
    found = []
    for subject in (0, 11, 29):
        scope = owner("tenant-a", f"user-{subject}")
        query = rng.normal(size=DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        dense = await store.dense_query(scope, query.tolist(), limit=10, now=T0)
        hybrid = await store.hybrid_query(scope, query.tolist(), BM25.query("chess"), limit=10, now=T0)
        found += [[(h.memory.id, round(h.score, 5)) for h in hits] for hits in (dense, hybrid)]
    return found


@pytest.fixture
async def store(tmp_path):
    edge = EdgeStore(tmp_path / "memories", dim=DIM, sealer=SEALER)
    await edge.start()
    yield edge
    await edge.close()


async def loop_lag_during(work: asyncio.Future) -> float:
    """The event loop's longest stall while ``work`` runs (a 10 ms ticker)."""
    worst = 0.0
    while not work.done():
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        worst = max(worst, time.perf_counter() - before - 0.01)
    return worst


async def test_optimized_apart_the_store_is_indexed_finds_the_same_keeps_writes_and_the_loop_runs(store):
    await fill(store)
    assert (await store.index_state()).unindexed == FILL  # one plain segment, as loaded
    before = await recall(store)
    scope = owner("tenant-a", "user-3")
    gone = (await store.scroll(scope, limit=5)).memories

    work = asyncio.ensure_future(store.optimize_apart())
    await asyncio.sleep(0.05)  # the child is running: the shard is closed, store calls wait
    late = points(3, 40, start=FILL, seed=1)
    writes = asyncio.gather(
        store.upsert(scope, late[:20]),
        store.upsert(scope, late[20:]),
        store.delete(scope, [m.id for m in gone]),
    )
    lag = await loop_lag_during(work)
    done = await work
    await asyncio.wait_for(writes, 30)

    assert done.changed and done.after.points == FILL
    assert (done.before.unindexed, done.after.unindexed) == (FILL, 0)
    assert await recall(store) == before  # subjects the writes did not touch: the very same results
    # Edge's own optimize() holds the GIL for the whole build: in this process the loop would stall
    # for all of it. In a child process the loop runs on.
    assert lag < done.seconds / 2, (lag, done.seconds)
    # nothing written meanwhile is lost; it waits for the next run (one more indexed sparse vector each)
    kept = await store.get(scope, [p.memory.id for p in late])
    assert sorted(m.text for m in kept) == sorted(p.memory.text for p in late)
    assert await store.get(scope, [m.id for m in gone], include_deleted=True) == []
    assert await store.count(scope) == FILL // SUBJECTS + 40 - 5
    assert (await store.index_state()).indexed - done.after.indexed == 40


async def test_upkeep_optimizes_once_writes_pass_the_threshold_and_pause(store):
    upkeep = Upkeep(store, after=3000, interval=0.05)
    await store.upsert(owner("tenant-a", "user-0"), points(0, 2000))
    assert await upkeep.check() is None  # below the threshold
    assert await upkeep.check() is None
    running = asyncio.ensure_future(upkeep.run())
    try:
        await fill(store, seed=1)  # past it: optimized once the writes pause, without anyone asking
        deadline = time.monotonic() + 30
        while upkeep.runs["ok"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert upkeep.runs == {"ok": 1}
        assert (await store.index_state()).unindexed == 0 and upkeep.waiting == 0
        await asyncio.sleep(0.3)  # several checks: nothing new, no second run
        assert upkeep.runs == {"ok": 1}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    # a payload change (a recall's access count) moves an indexed point to a plain segment: it counts
    upkeep.after, touched = 1000, 0
    for subject in range(6):
        scope = owner("tenant-a", f"user-{subject}")
        page = await store.scroll(scope, limit=FILL // SUBJECTS)
        await store.set_payloads(scope, {m.id: access_payload(1, T0) for m in page.memories})
        touched += len(page.memories)
    assert await upkeep.check() is None  # 1,500 waiting, still coming in
    assert upkeep.waiting == touched
    assert await upkeep.check() is not None  # settled: optimized
    assert upkeep.runs == {"ok": 2}
    assert upkeep.seconds > 0


async def test_upkeep_does_not_optimize_while_a_load_goes_on_unless_it_never_pauses(store):
    upkeep = Upkeep(store, after=1000, interval=60)
    await store.upsert(owner("tenant-a", "user-0"), points(0, 1500))
    assert await upkeep.check() is None  # first look: is the load still going on?
    await store.upsert(owner("tenant-a", "user-1"), points(1, 1000))
    assert await upkeep.check() is None  # it is: 2,500 waiting, under 4 x 1,000
    await store.upsert(owner("tenant-a", "user-2"), points(2, 1600))
    done = await upkeep.check()  # 4,100 waiting: optimized though writes go on
    assert done is not None and upkeep.runs == {"ok": 1}
    # too few for Edge to index (below its threshold): they stay plain, and do not count again
    assert done.after.unindexed == 4100
    assert await upkeep.check() is None and upkeep.waiting == 0


async def test_a_failed_optimize_is_logged_counted_and_the_store_serves_on(store, monkeypatch, caplog):
    await fill(store, total=600)
    before = await recall(store)
    monkeypatch.setattr(store_edge, "OPTIMIZE_TIMEOUT", 0.001)  # the child is stopped at once
    upkeep = Upkeep(store, after=100, interval=60)
    with caplog.at_level(logging.ERROR, logger="memproxy.upkeep"):  # whatever level an earlier test left
        assert await upkeep.check(start=True) is None
    assert upkeep.runs == {"error": 1}
    assert "memory store optimize failed" in caplog.text
    assert await upkeep.check(start=True) is None  # backing off: no second try at once
    assert upkeep.runs == {"error": 1}
    assert await recall(store) == before  # reopened as it was
    await store.upsert(owner("tenant-a", "user-0"), points(0, 3, start=900, seed=2))
    assert await store.count(owner("tenant-a", "user-0")) == 600 // SUBJECTS + 3


async def test_a_store_closed_while_it_optimizes_closes_once_done_and_reopens_optimized(tmp_path):
    path = tmp_path / "memories"
    edge = EdgeStore(path, dim=DIM, sealer=SEALER)
    await edge.start()
    await fill(edge, total=600)
    before = await recall(edge)
    work = asyncio.ensure_future(edge.optimize_apart())
    await asyncio.sleep(0.05)
    await edge.close()  # a proxy stopping meanwhile: waits for the run, then closes the reopened shard
    assert work.done() and work.result().after.points == 600
    again = EdgeStore(path, dim=DIM, sealer=SEALER)
    await again.start()
    try:
        assert await recall(again) == before
    finally:
        await again.close()


async def test_a_proxy_optimizes_a_loaded_store_before_memory_is_ready(tmp_path, make_proxy):
    data_dir = tmp_path / "proxy"
    loaded = EdgeStore(data_dir / "qdrant" / "memproxy_memories", dim=DIM, sealer=SEALER)
    await loaded.start()
    try:
        await fill(loaded)  # a bulk load while the proxy was down
    finally:
        await loaded.close()

    proxy = make_proxy(data_dir=data_dir, edge_optimize_after=5000)
    runtime = proxy.app.state.runtime
    assert runtime.memory is not None and runtime.upkeep is not None
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'memproxy_store_optimize_runs_total{outcome="ok"} 1.0' in metrics
    assert 'memproxy_store_optimize_runs_total{outcome="error"} 0.0' in metrics
    assert "memproxy_store_unindexed_points 0.0" in metrics
    assert (await runtime.memory.store.index_state()).unindexed == 0  # its thread serves any event loop


async def test_a_recall_does_not_wait_for_an_optimize_it_goes_on_without_memory(tmp_path, make_proxy):
    """While the store is closed for an optimize (seconds), a request is answered at once, degraded, with
    the cause counted; it would otherwise wait behind the optimize on the store's thread until its
    deadline (here far longer than the optimize). Once the store is back, requests recall again."""
    data_dir = tmp_path / "proxy"
    loaded = EdgeStore(data_dir / "qdrant" / "memproxy_memories", dim=DIM, sealer=SEALER)
    await loaded.start()
    try:
        await fill(loaded)
    finally:
        await loaded.close()
    proxy = make_proxy(data_dir=data_dir, edge_optimize_after=0, memory_recall_deadline_ms=60_000)
    store = proxy.app.state.runtime.memory.store
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-optimize", max_retries=0)

    async def status() -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "what do I like?"}], user="user-3"
        )
        return raw.headers["x-memory-status"]

    assert await status() == "none"  # recalls (this tenant has no memories of user-3)
    work = asyncio.ensure_future(store.optimize_apart())
    await asyncio.sleep(0.05)  # the child runs: the shard is closed
    assert await status() == "degraded"
    assert not work.done(), "the answer waited for the optimize"
    assert (await work).changed
    assert await status() == "none"
    await client.close()
    async with httpx.AsyncClient(base_url=proxy.url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'memproxy_degraded_total{cause="recall_store_paused"} 1.0' in metrics
