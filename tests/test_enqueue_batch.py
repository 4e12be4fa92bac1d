"""Concurrent enqueues share one write (one SQLite transaction, one Redis pipeline), each caller still
returning only once its own job is stored: batched, nothing lost, nothing doubled, failures seen by all."""

from __future__ import annotations

import asyncio

import pytest
from conftest import _free_port, owner
from redis.asyncio import Redis

from proxy.state.redis import RedisState
from proxy.state.sqlite import SqliteState


async def test_concurrent_enqueues_each_store_their_job_once(state) -> None:
    who = owner("t1", "alice")
    keys = [f"t1:turn-{index % 40}" for index in range(100)]  # 60 repeats of a key, some in the same batch
    ids = await asyncio.gather(
        *(state.enqueue("extract", {"n": index}, idempotency_key=key, subject=who) for index, key in enumerate(keys))
    )
    by_key: dict[str, set[str]] = {}
    for key, job_id in zip(keys, ids, strict=True):
        by_key.setdefault(key, set()).add(job_id)
    assert all(len(found) == 1 for found in by_key.values()), "a repeated key gets the first job's id"
    assert len(set(ids)) == 40
    claimed = await state.claim("worker", count=200)
    assert sorted(job.id for job in claimed) == sorted(set(ids)), "every distinct job queued exactly once"
    assert {job.payload["n"] for job in claimed} == set(range(40)), "the first of each key is the one kept"


async def test_a_job_alone_is_written_at_once_and_the_next_ones_too(state) -> None:
    first = await asyncio.wait_for(state.enqueue("extract", {"n": 1}), 5)
    second = await asyncio.wait_for(state.enqueue("extract", {"n": 2}), 5)
    assert first != second
    assert len(await state.claim("worker", count=10)) == 2


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_every_caller_of_a_failed_batch_sees_the_failure(backend, tmp_path) -> None:
    if backend == "sqlite":
        state = await SqliteState.open(tmp_path / "state.sqlite3")
        await state.close()  # closed: every write refused
    else:
        state = RedisState(Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=1))
    results = await asyncio.wait_for(
        asyncio.gather(*(state.enqueue("extract", {"n": n}) for n in range(20)), return_exceptions=True), 10
    )
    await state.close()
    assert len(results) == 20 and all(isinstance(result, Exception) for result in results)


@pytest.mark.parametrize("state_factory", ["sqlite"], indirect=True)
async def test_a_caller_that_gives_up_does_not_cancel_the_others(state) -> None:
    tasks = [asyncio.ensure_future(state.enqueue("extract", {"n": n})) for n in range(10)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    done = await asyncio.gather(*tasks[1:])
    assert len(done) == 9
    assert len(await state.claim("worker", count=20)) >= 9
