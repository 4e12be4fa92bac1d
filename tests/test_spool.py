"""The spool (proxy/learn/spool.py): finished turns kept on local disk while the state store is away.

Real SQLite files and both real state stores (SQLite, Redis): turns survive a reopen, are delivered
into the job queue in the order they were spooled, erased per owner, and never carry a credential.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from conftest import TEST_SECRET, owner

from proxy.learn.spool import SPOOL_FILE, Spool, deliver
from proxy.learn.turn import Turn
from proxy.state import State


def a_turn(text: str, subject: str = "alice", tenant: str = "tenant-a", **extra) -> Turn:
    turn_id = f"chatcmpl-{uuid.uuid4().hex[:10]}"
    return Turn(owner(tenant, subject), "chat", turn_id, [text], ["ok"], {"completion_id": turn_id}, **extra)


async def test_nothing_is_written_until_a_turn_is_spooled(tmp_path) -> None:
    spool = await Spool.open(tmp_path / SPOOL_FILE)
    assert (spool.pending, await spool.depth(), await spool.oldest()) == (0, 0, [])
    assert await spool.drop(owner("tenant-a", "alice")) == 0
    assert not (tmp_path / SPOOL_FILE).exists()
    await spool.close()


async def test_spooled_turns_survive_a_restart_and_are_delivered_in_order(tmp_path, state: State) -> None:
    path = tmp_path / SPOOL_FILE
    spool = await Spool.open(path)
    turns = [a_turn(f"I have {n} cats.", subject=f"user-{n % 3}", started_at=1000.0 + n) for n in range(7)]
    for turn in turns:
        await spool.append(turn)
    assert spool.pending == 7
    await spool.close()  # the proxy dies with turns spooled

    again = await Spool.open(path)
    assert again.pending == 7 and await again.depth() == 7
    assert await deliver(again, state, TEST_SECRET, batch=3) == 7
    assert (again.pending, await again.depth()) == (0, 0)
    jobs = []
    while batch := await state.claim("w1", count=10, lease_seconds=30):
        jobs += batch
    assert [job.payload["turn_id"] for job in jobs] == [turn.turn_id for turn in turns], "in the order spooled"
    assert [job.payload["started_at"] for job in jobs] == [turn.started_at for turn in turns], "fence times kept"
    assert {job.subject_hash for job in jobs} == {turn.owner.hash for turn in turns}, "indexed for erasure"
    await again.close()


async def test_a_turn_delivered_twice_is_queued_once(tmp_path, state: State) -> None:
    spool = await Spool.open(tmp_path / SPOOL_FILE)
    turn = a_turn("I live in Lyon.")
    await spool.append(turn)
    await spool.append(turn)  # delivered, then the proxy died before removing it: spooled again
    assert await deliver(spool, state, TEST_SECRET) == 2
    assert await state.pending_count() == 1, "the job queue's idempotency key (tenant + turn id)"
    await spool.close()


async def test_a_failed_delivery_keeps_the_rest_spooled_in_order(tmp_path, state: State) -> None:
    from conftest import _free_port
    from redis import ConnectionError as RedisDown
    from redis.asyncio import Redis

    from proxy.state.redis import RedisState

    spool = await Spool.open(tmp_path / SPOOL_FILE)
    turns = [a_turn(f"Fact {n}.") for n in range(3)]
    for turn in turns:
        await spool.append(turn)
    gone = RedisState(Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=1))
    with pytest.raises(RedisDown):  # nobody listens there
        await deliver(spool, gone, TEST_SECRET)
    await gone.close()
    assert spool.pending == 3 and await spool.depth() == 3
    assert await deliver(spool, state, TEST_SECRET) == 3  # the store is back
    claimed = await state.claim("w1", count=5, lease_seconds=30)
    assert [job.payload["turn_id"] for job in claimed] == [turn.turn_id for turn in turns]
    await spool.close()


async def test_an_erasure_drops_the_owners_spooled_turns_and_leaves_no_trace(tmp_path, state: State) -> None:
    path = tmp_path / SPOOL_FILE
    spool = await Spool.open(path)
    for n in range(3):
        await spool.append(a_turn(f"My secret is tangerine-{n}.", subject="alice"))
    await spool.append(a_turn("I like tea.", subject="bob"))
    await spool.append(a_turn("I like tea.", subject="alice", tenant="tenant-b"))

    assert await spool.drop(owner("tenant-a", "alice")) == 3
    assert spool.pending == 2
    assert await deliver(spool, state, TEST_SECRET) == 2
    left = {(job.tenant, job.subject_hash) for job in await state.claim("w1", count=5, lease_seconds=30)}
    assert left == {("tenant-a", owner("tenant-a", "bob").hash), ("tenant-b", owner("tenant-b", "alice").hash)}
    await spool.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(SPOOL_FILE))
    assert b"tangerine" not in raw, "deleted rows are overwritten and the write-ahead log truncated"


async def test_a_turn_carrying_a_credential_is_never_spooled(tmp_path) -> None:
    spool = await Spool.open(tmp_path / SPOOL_FILE)
    leaky = a_turn("hello")
    leaky.source = {"headers": {"Authorization": "Bearer sk-live"}}
    with pytest.raises(ValueError, match="credentials"):
        await spool.append(leaky)
    assert spool.pending == 0 and await spool.depth() == 0
    await spool.close()


async def test_every_append_is_on_disk_before_it_returns(tmp_path) -> None:
    path = tmp_path / SPOOL_FILE
    spool = await Spool.open(path)
    await spool.append(a_turn("I run Kubernetes."))
    with sqlite3.connect(path) as other:  # another process reading the file, the spool still open
        assert other.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 1
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await spool.close()


async def test_a_row_that_is_no_turn_is_dropped_not_retried_forever(tmp_path, state: State) -> None:
    path = tmp_path / SPOOL_FILE
    spool = await Spool.open(path)
    await spool.append(a_turn("first"))
    with sqlite3.connect(path) as other:
        other.execute("INSERT INTO turns (tenant, subject_hash, payload) VALUES ('t', 's', '{\"route\": 1}')")
    await spool.append(a_turn("third"))
    assert await deliver(spool, state, TEST_SECRET) == 2
    assert await spool.depth() == 0
    await spool.close()


async def test_an_unreadable_spool_file_does_not_stop_the_start(tmp_path) -> None:
    path = tmp_path / SPOOL_FILE
    path.write_bytes(b"this is not a database" * 100)
    spool = await Spool.open(path)  # the proxy starts and forwards; spooling fails, counted by the hook
    assert spool.pending == 0
    with pytest.raises(sqlite3.DatabaseError):
        await spool.append(a_turn("I live in Lyon."))
    await spool.close()
