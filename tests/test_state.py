"""Contract tests of the state store: every test runs against SQLite and a real Redis.

Time: the SQLite store runs on a ManualClock that ``elapse`` moves; Redis measures TTLs and leases
itself, so there ``elapse`` sleeps (the fixtures use leases and backoffs of 0.2-0.4 s).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from proxy.owner import Owner
from proxy.state import ChainHead, Erased, Job, ManualClock, RecordPage, State, UnknownCursor
from proxy.state.base import SUBJECT_INDEX_NS

ALICE = Owner.of(b"secret", "tenant-a", "alice@example.com")
BOB = Owner.of(b"secret", "tenant-a", "bob@example.com")


async def elapse(state: State, seconds: float) -> None:
    if isinstance(state.clock, ManualClock):
        state.clock.advance(seconds)
    else:
        await asyncio.sleep(seconds)


# --- key/value -------------------------------------------------------------------------------------


async def test_values_round_trip_per_namespace(state: State) -> None:
    await state.set("thread_subject", "t1", {"subject": "alice", "n": 1})
    await state.set("instructions", "t1", "be brief")
    assert await state.get("thread_subject", "t1") == {"subject": "alice", "n": 1}
    assert await state.get("instructions", "t1") == "be brief"
    assert await state.delete("thread_subject", "t1") is True
    assert await state.get("thread_subject", "t1") is None
    assert await state.delete("thread_subject", "t1") is False
    assert await state.get("instructions", "t1") == "be brief"


async def test_keys_containing_separators_do_not_collide(state: State) -> None:
    await state.set("a:b", "c", 1)
    await state.set("a", "b:c", 2)
    assert (await state.get("a:b", "c"), await state.get("a", "b:c")) == (1, 2)


async def test_values_expire_after_their_ttl(state: State) -> None:
    await state.set("instructions", "asst_1", "cached", ttl=0.2)
    await state.set("instructions", "asst_2", "kept", ttl=0.2)
    assert await state.expire("instructions", "asst_2", None) is True
    assert await state.get("instructions", "asst_1") == "cached"
    await elapse(state, 0.3)
    assert await state.get("instructions", "asst_1") is None
    assert await state.get("instructions", "asst_2") == "kept"
    assert await state.expire("instructions", "asst_1", 5) is False


async def test_set_new_stores_only_when_absent_and_racers_agree(state: State) -> None:
    assert await state.set_new("keys", "k1", {"v": "first"}) is True
    assert await state.set_new("keys", "k1", {"v": "second"}) is False
    assert await state.get("keys", "k1") == {"v": "first"}
    results = await asyncio.gather(*(state.set_new("keys", "k2", i) for i in range(8)))
    assert results.count(True) == 1 and await state.get("keys", "k2") == results.index(True)
    await state.delete("keys", "k1")
    assert await state.set_new("keys", "k1", "again") is True


async def test_compact_keeps_what_is_stored(state: State) -> None:
    await state.set("ns", "kept", "value")
    await state.set("ns", "gone", "value")
    await state.delete("ns", "gone")
    await state.compact()
    assert await state.get("ns", "kept") == "value" and await state.get("ns", "gone") is None


async def test_setting_a_value_again_replaces_its_ttl(state: State) -> None:
    await state.set("instructions", "asst_1", "old", ttl=0.2)
    await state.set("instructions", "asst_1", "new")
    await elapse(state, 0.3)
    assert await state.get("instructions", "asst_1") == "new"


async def test_lists_keep_only_the_newest_items(state: State) -> None:
    for n in range(1, 6):
        length = await state.list_push("recent", "t1", {"text": f"m{n}"}, max_len=3)
    assert length == 3
    assert [m["text"] for m in await state.list_range("recent", "t1")] == ["m3", "m4", "m5"]
    assert await state.list_push("recent", "t1", "m6", "m7", max_len=3) == 3
    assert await state.list_range("recent", "t1", -2, -1) == ["m6", "m7"]
    assert await state.list_range("recent", "missing") == []


async def test_lists_expire_with_a_ttl(state: State) -> None:
    await state.list_push("recent", "t1", "hello", ttl=0.2)
    await state.list_push("recent", "t2", "kept")
    await elapse(state, 0.3)
    assert await state.list_range("recent", "t1") == []
    assert await state.list_range("recent", "t2") == ["kept"]


async def test_sets_add_contain_remove(state: State) -> None:
    assert await state.set_add("seen", "t1", "msg_1", "msg_2") == 2
    assert await state.set_add("seen", "t1", "msg_2", "msg_3") == 1
    assert await state.set_members("seen", "t1") == {"msg_1", "msg_2", "msg_3"}
    assert await state.set_contains("seen", "t1", "msg_2") is True
    assert await state.set_contains("seen", "t1", "msg_9") is False
    assert await state.set_remove("seen", "t1", "msg_1", "msg_9") == 1
    assert await state.set_remove("seen", "t1", "msg_2", "msg_3") == 2
    assert await state.set_members("seen", "t1") == set()
    assert await state.delete("seen", "t1") is False


async def test_sets_expire_with_a_ttl(state: State) -> None:
    await state.set_add("seen", "t1", "msg_1", ttl=0.2)
    await elapse(state, 0.3)
    assert await state.set_contains("seen", "t1", "msg_1") is False
    assert await state.set_add("seen", "t1", "msg_2") == 1
    assert await state.set_members("seen", "t1") == {"msg_2"}


async def test_invalid_ttl_is_refused(state: State) -> None:
    with pytest.raises(ValueError):
        await state.set("ns", "k", 1, ttl=0)


# --- records ---------------------------------------------------------------------------------------


async def _put_runs(state: State, tenant: str, count: int) -> list[str]:
    ids = [f"run_{n}" for n in range(count)]
    for n, run_id in enumerate(ids):
        await state.put_record(tenant, "runs", run_id, {"id": run_id, "n": n})
    return ids


def _ids(page: RecordPage) -> list[str]:
    return [item["id"] for item in page.items]


async def test_records_page_newest_first_with_after_cursor(state: State) -> None:
    await _put_runs(state, "tenant-a", 5)
    first = await state.list_records("tenant-a", "runs", limit=2)
    assert (_ids(first), first.has_more) == (["run_4", "run_3"], True)
    second = await state.list_records("tenant-a", "runs", limit=2, after="run_3")
    assert (_ids(second), second.has_more) == (["run_2", "run_1"], True)
    last = await state.list_records("tenant-a", "runs", limit=2, after="run_1")
    assert (_ids(last), last.has_more) == (["run_0"], False)


async def test_records_page_ascending_and_before_cursor(state: State) -> None:
    await _put_runs(state, "tenant-a", 5)
    asc = await state.list_records("tenant-a", "runs", order="asc", limit=3)
    assert (_ids(asc), asc.has_more) == (["run_0", "run_1", "run_2"], True)
    before = await state.list_records("tenant-a", "runs", limit=2, before="run_2")
    assert (_ids(before), before.has_more) == (["run_4", "run_3"], False)
    nearest = await state.list_records("tenant-a", "runs", limit=1, before="run_2")
    assert (_ids(nearest), nearest.has_more) == (["run_3"], True)
    asc_before = await state.list_records("tenant-a", "runs", order="asc", limit=5, before="run_2")
    assert _ids(asc_before) == ["run_0", "run_1"]


async def test_replacing_a_record_keeps_its_place(state: State) -> None:
    await _put_runs(state, "tenant-a", 3)
    await state.put_record("tenant-a", "runs", "run_0", {"id": "run_0", "status": "completed"})
    assert await state.get_record("tenant-a", "runs", "run_0") == {"id": "run_0", "status": "completed"}
    assert _ids(await state.list_records("tenant-a", "runs", order="asc")) == ["run_0", "run_1", "run_2"]
    assert await state.delete_record("tenant-a", "runs", "run_1") is True
    assert await state.delete_record("tenant-a", "runs", "run_1") is False
    assert _ids(await state.list_records("tenant-a", "runs", order="asc")) == ["run_0", "run_2"]


async def test_records_are_scoped_by_tenant(state: State) -> None:
    await _put_runs(state, "tenant-a", 2)
    await state.put_record("tenant-a", "assistants", "run_0", {"id": "run_0", "kind": "assistant"})
    assert await state.get_record("tenant-b", "runs", "run_0") is None
    assert _ids(await state.list_records("tenant-b", "runs")) == []
    assert await state.delete_record("tenant-b", "runs", "run_0") is False
    with pytest.raises(UnknownCursor):
        await state.list_records("tenant-b", "runs", after="run_0")
    assert await state.get_record("tenant-a", "runs", "run_0") == {"id": "run_0", "n": 0}
    assert _ids(await state.list_records("tenant-a", "runs")) == ["run_1", "run_0"]


# --- chained records -------------------------------------------------------------------------------


def _link(head: ChainHead | None) -> dict:
    """A chained record on ``head``: pure, as :meth:`State.append_chained` requires."""
    seq = (head.seq if head else 0) + 1
    prev = head.hash if head else "genesis"
    return {"id": f"entry_{seq}_{prev[-6:]}", "seq": seq, "prev": prev, "hash": f"{prev[-6:]}>{seq}"}


async def test_concurrent_chained_appends_on_two_replicas_never_share_a_head(state_factory) -> None:  # type: ignore[no-untyped-def]
    first, second = await state_factory(), await state_factory()
    await asyncio.gather(*(replica.append_chained("t", "log", _link) for replica in [first, second] * 25))
    records = (await first.list_records("t", "log", order="asc", limit=100)).items
    assert [record["seq"] for record in records] == list(range(1, 51))
    assert [record["prev"] for record in records[1:]] == [record["hash"] for record in records[:-1]]
    assert await second.chain_head("t", "log") == ChainHead(50, records[-1]["hash"])
    assert await second.chain_head("other-tenant", "log") is None
    assert first.chain_appends["log"] + second.chain_appends["log"] == 50


async def test_a_chain_without_a_stored_head_continues_from_its_newest_record(state: State) -> None:
    await state.put_record("t", "log", "old", {"id": "old", "hash": "from-before"})  # no seq: seq 0
    record = await state.append_chained("t", "log", _link)
    assert (record["seq"], record["prev"]) == (1, "from-before")
    assert await state.chain_head("t", "log") == ChainHead(1, record["hash"])
    with pytest.raises(ValueError):
        await state.append_chained("t", "a:b", _link)


# --- job queue -------------------------------------------------------------------------------------


async def test_claimed_job_is_hidden_until_acked_then_gone(state: State) -> None:
    job_id = await state.enqueue("extract", {"thread_id": "t1", "run_id": "r1"})
    [job] = await state.claim("w1", count=5)
    assert (job.id, job.kind, job.payload, job.attempts) == (job_id, "extract", {"thread_id": "t1", "run_id": "r1"}, 1)
    assert await state.claim("w2") == []
    assert await state.pending_count() == 1
    assert await state.ack(job) is True
    assert await state.pending_count() == 0
    await elapse(state, 0.3)
    assert await state.claim("w2") == []


async def test_claim_count_limits_a_batch(state: State) -> None:
    for n in range(3):
        await state.enqueue("extract", {"n": n})
    first = await state.claim("w1", count=2)
    second = await state.claim("w2", count=2)
    assert (len(first), len(second)) == (2, 1)
    assert {j.payload["n"] for j in first + second} == {0, 1, 2}


async def test_expired_lease_delivers_the_job_again(state: State) -> None:
    await state.enqueue("extract", {"run_id": "r1"})
    [lost] = await state.claim("w1", lease_seconds=0.2)
    await elapse(state, 0.3)
    [again] = await state.claim("w2", lease_seconds=0.2)
    assert (again.id, again.attempts, again.payload) == (lost.id, 2, {"run_id": "r1"})
    assert await state.ack(lost) is False, "a worker whose lease expired cannot ack"
    assert await state.pending_count() == 1
    assert await state.ack(again) is True
    assert await state.pending_count() == 0


async def test_worker_that_lost_its_lease_cannot_fail_the_job(state: State) -> None:
    await state.enqueue("extract", {"run_id": "r1"})
    [lost] = await state.claim("w1")
    await elapse(state, 0.3)
    [held] = await state.claim("w2")
    assert await state.fail(lost, "timeout") is False
    assert await state.claim("w3") == [], "w2 still holds the lease"
    assert await state.dead_letters() == []
    assert await state.ack(held) is True


async def test_failed_job_retries_with_growing_backoff_then_dead_letters(state: State) -> None:
    job_id = await state.enqueue("extract", {"run_id": "r1"}, idempotency_key="run:r1")
    [job] = await state.claim("w1")
    assert await state.fail(job, "upstream 500") is True
    assert await state.claim("w1") == [], "not before the backoff"
    assert await state.pending_count() == 1
    await elapse(state, 0.25)
    [job] = await state.claim("w1")
    assert (job.id, job.attempts, job.last_error) == (job_id, 2, "upstream 500")
    await state.fail(job, "upstream 502")
    await elapse(state, 0.25)
    assert await state.claim("w1") == [], "the second backoff is twice the first"
    await elapse(state, 0.2)
    [job] = await state.claim("w1")
    assert job.attempts == 3
    assert await state.fail(job, "bad json") is True
    await elapse(state, 0.5)
    assert await state.claim("w1") == []
    assert await state.pending_count() == 0
    [dead] = await state.dead_letters()
    assert (dead.id, dead.attempts, dead.last_error, dead.payload) == (job_id, 3, "bad json", {"run_id": "r1"})
    assert await state.enqueue("extract", {"run_id": "r1"}, idempotency_key="run:r1") != job_id


async def test_idempotency_key_dedupes_while_pending_and_after_done(state: State) -> None:
    first = await state.enqueue("extract", {"run_id": "r1"}, idempotency_key="run:r1")
    assert await state.enqueue("extract", {"run_id": "r1"}, idempotency_key="run:r1") == first
    assert await state.pending_count() == 1
    [job] = await state.claim("w1", count=5)
    await state.ack(job)
    assert await state.enqueue("extract", {"run_id": "r1"}, idempotency_key="run:r1") == first
    assert await state.claim("w1") == []
    await elapse(state, 0.4)  # past the retention window (0.3 s)
    again = await state.enqueue("extract", {"run_id": "r1"}, idempotency_key="run:r1")
    assert again != first
    assert [j.id for j in await state.claim("w1")] == [again]


async def test_pending_jobs_survive_a_restart(state_factory) -> None:  # type: ignore[no-untyped-def]
    before = await state_factory()
    job_id = await before.enqueue("extract", {"run_id": "r1"})
    await before.set("thread_subject", "t1", "alice")
    await before.put_record("tenant-a", "assistants", "asst_1", {"id": "asst_1"})
    await before.close()
    after = await state_factory()
    assert [j.id for j in await after.claim("w1")] == [job_id]
    assert await after.get("thread_subject", "t1") == "alice"
    assert await after.get_record("tenant-a", "assistants", "asst_1") == {"id": "asst_1"}


async def test_two_replicas_never_claim_the_same_job(state_factory) -> None:  # type: ignore[no-untyped-def]
    replicas = [await state_factory(), await state_factory()]
    for n in range(40):
        await replicas[0].enqueue("extract", {"n": n})

    async def drain(state: State, consumer: str) -> list[Job]:
        got: list[Job] = []
        while batch := await state.claim(consumer, count=3, lease_seconds=30):
            got += batch
        return got

    batches = await asyncio.gather(*(drain(replicas[i % 2], f"w{i}") for i in range(4)))
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_a_job_waiting_for_its_tenants_key_keeps_its_attempts_until_released(state: State) -> None:
    await state.enqueue("extract", {"n": 1}, idempotency_key="t:1", subject=ALICE)
    other = await state.enqueue("extract", {"n": 2}, subject=Owner.of(b"secret", "tenant-b", "carol"))
    [job] = [j for j in await state.claim("w1", count=2) if j.payload["n"] == 1]
    assert job.attempts == 1
    assert await state.wait_for_key(job) is True
    assert await state.ack(job) is False, "the delivery was given back"
    assert await state.wait_for_key(job) is False, "a lease given back cannot be given back again"
    assert await state.waiting_count() == 1 and await state.pending_count() == 2
    await elapse(state, 1.0)  # however long it waits: it is never due on its own, it never dies
    assert [j.id for j in await state.claim("w1", count=5)] == [other]
    assert await state.dead_letters() == []
    assert await state.enqueue("extract", {"n": 1}, idempotency_key="t:1") == job.id, "still pending"

    assert await state.release_waiting("tenant-b") == 0, "another tenant's key releases nothing"
    assert await state.release_waiting("tenant-a") == 1
    assert await state.waiting_count() == 0
    [again] = await state.claim("w2")
    assert (again.id, again.attempts) == (job.id, 1), "the wait cost no attempt"
    assert await state.ack(again) is True


async def test_releasing_every_tenant_and_erasing_reach_waiting_jobs(state: State) -> None:
    for n, owner in enumerate((ALICE, BOB, Owner.of(b"secret", "tenant-b", "carol"))):
        await state.enqueue("extract", {"n": n}, subject=owner)
    for job in await state.claim("w1", count=3):
        assert await state.wait_for_key(job)
    assert await state.waiting_count() == 3
    assert await state.drop_jobs(BOB) == 1
    assert await state.waiting_count() == 2
    assert await state.release_waiting() == 2, "None: every tenant (an operator key arrived)"
    assert sorted(j.payload["n"] for j in await state.claim("w1", count=5)) == [0, 2]


async def test_ping_answers_while_the_store_is_up(state: State) -> None:
    await state.ping()


async def test_credentials_are_refused_in_job_payloads(state: State) -> None:
    with pytest.raises(ValueError, match="credentials"):
        await state.enqueue("extract", {"request": {"headers": {"Authorization": "Bearer sk-live"}}})
    with pytest.raises(ValueError, match="credentials"):
        await state.enqueue("extract", {"items": [{"api_key": "sk-live"}]})
    assert await state.pending_count() == 0


# --- erasure ---------------------------------------------------------------------------------------


async def test_forget_subject_removes_entries_records_and_jobs(state_factory, state_job_policy) -> None:  # type: ignore[no-untyped-def]
    state = await state_factory(replace(state_job_policy, max_attempts=1))
    for who, thread in ((ALICE, "t_a"), (BOB, "t_b")):
        await state.set("thread_subject", thread, who.hash, subject=who)
        await state.list_push("recent", thread, "I live in Paris", max_len=5, subject=who)
        await state.set_add("subject_threads", who.hash, thread, subject=who)
        await state.put_record(who.tenant, "runs", f"run_{thread}", {"thread": thread}, subject=who)
    await state.enqueue("extract", {"thread_id": "t_a", "n": 1}, subject=ALICE)
    [dead] = await state.claim("w1")
    await state.fail(dead, "boom")  # max_attempts=1: straight to the dead letters
    await state.enqueue("extract", {"thread_id": "t_a", "n": 2}, subject=ALICE)
    [leased] = await state.claim("w1")
    await state.enqueue("extract", {"thread_id": "t_a", "n": 3}, subject=ALICE)
    await state.enqueue("extract", {"thread_id": "t_b"}, subject=BOB)

    erased = await state.forget_subject(ALICE)

    assert (erased.entries, erased.jobs) == (4, 3)
    assert await state.get("thread_subject", "t_a") is None
    assert await state.list_range("recent", "t_a") == []
    assert await state.set_members("subject_threads", ALICE.hash) == set()
    assert await state.get_record("tenant-a", "runs", "run_t_a") is None
    assert await state.dead_letters() == []
    assert await state.ack(leased) is False, "a dropped job is not completed by its worker"
    assert await state.pending_count() == 1
    [bobs] = await state.claim("w1")
    assert bobs.payload == {"thread_id": "t_b"} and bobs.subject_hash == BOB.hash
    assert await state.get("thread_subject", "t_b") == BOB.hash
    assert await state.list_range("recent", "t_b") == ["I live in Paris"]
    assert await state.get_record("tenant-a", "runs", "run_t_b") == {"thread": "t_b"}
    assert await state.forget_subject(ALICE) == Erased(entries=0, jobs=0)


async def test_erasure_finds_what_wave_1_indexed_under_the_unkeyed_hash(state: State) -> None:
    """Entries and jobs stored by an earlier version (index and job rows keyed by an unkeyed SHA-256)."""
    await state.set("thread_subject", "tenant-a:t_old", "alice@example.com")
    await state.set_add(SUBJECT_INDEX_NS, ALICE.legacy_hash, json.dumps(["kv", "thread_subject", "tenant-a:t_old"]))
    old_job = Job(id="job_old", kind="extract", payload={"n": 1}, tenant="tenant-a", subject_hash=ALICE.legacy_hash)
    await state._enqueue(old_job)  # as wave 1 wrote it: no keyed pseudonym anywhere
    await state.enqueue("extract", {"n": 2}, subject=ALICE)

    erased = await state.forget_subject(ALICE)

    assert (erased.entries, erased.jobs) == (1, 2)
    assert await state.get("thread_subject", "tenant-a:t_old") is None
    assert await state.set_members(SUBJECT_INDEX_NS, ALICE.legacy_hash) == set()
    assert await state.pending_count() == 0


async def test_a_tenant_scoped_view_prefixes_keys_and_refuses_another_tenants_owner(state: State) -> None:
    mine = state.tenant("tenant-a")
    await mine.set("thread_subject", "t_1", "alice@example.com", subject=ALICE)
    assert await state.get("thread_subject", "tenant-a:t_1") == "alice@example.com"
    assert await state.tenant("tenant-b").get("thread_subject", "t_1") is None
    with pytest.raises(ValueError):
        await state.tenant("tenant-b").set("thread_subject", "t_1", "x", subject=ALICE)
    assert (await state.forget_subject(ALICE)).entries == 1


async def test_drop_jobs_by_predicate(state: State) -> None:
    await state.enqueue("extract", {"n": 1})
    await state.enqueue("janitor", {"n": 2})
    assert await state.drop_jobs(lambda job: job.kind == "janitor") == 1
    assert [j.kind for j in await state.claim("w1", count=5)] == ["extract"]


# --- factory and shared policy ---------------------------------------------------------------------


async def test_open_state_uses_sqlite_under_data_dir_by_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from proxy.config import Settings
    from proxy.state import open_state
    from proxy.state.sqlite import SqliteState

    settings = Settings(data_dir=tmp_path, job_max_attempts=1)
    async with await open_state(settings) as state:
        assert isinstance(state, SqliteState)
        await state.enqueue("extract", {"n": 1})
        [job] = await state.claim("w1")
        await state.fail(job, "boom")
        assert [j.last_error for j in await state.dead_letters()] == ["boom"], "job_max_attempts=1 applies"
    assert (tmp_path / "state.sqlite3").exists()


async def test_open_state_uses_redis_when_configured(redis_server_url: str) -> None:
    from proxy.config import Settings
    from proxy.state import open_state
    from proxy.state.redis import RedisState

    settings = Settings(redis_url=redis_server_url, redis_prefix="factory-test")
    async with await open_state(settings) as state:
        assert isinstance(state, RedisState)
        await state.set("ns", "k", 1)
        assert await state.redis.exists("factory-test:kv:ns:k") == 1


def test_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    from proxy.state import JobPolicy

    policy = JobPolicy(backoff_base=2.0, backoff_cap=30.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_owner_hash_hides_the_user_id_and_separates_tenants() -> None:
    assert "alice" not in ALICE.hash
    assert ALICE.hash == Owner.of(b"secret", "tenant-a", "alice@example.com").hash
    assert ALICE.hash != Owner.of(b"secret", "tenant-b", "alice@example.com").hash


async def test_sqlite_leaves_no_deleted_bytes_in_its_files_after_compact(tmp_path) -> None:
    from proxy.state.sqlite import SqliteState

    state = await SqliteState.open(tmp_path / "state.sqlite3")
    try:
        await state.list_push("turns", "t1", "my passport number is ZX-4471-QQ", subject=ALICE)
        await state.set("other", "k", "unrelated")
        await state.forget_subject(ALICE)
        await state.compact()
        for path in tmp_path.iterdir():  # state.sqlite3, -wal, -shm
            assert b"ZX-4471-QQ" not in path.read_bytes(), path.name
        assert await state.get("other", "k") == "unrelated"
    finally:
        await state.close()
