"""The extraction worker (proxy/learn/worker.py): queued turns become memories, at least once, never leaking keys.

Real pieces throughout: the emulator over HTTP plays the LLM (its generic structured output for plain
facts, a scripted answer for update/delete decisions), the offline embedding model, Qdrant Edge, and
the state store (SQLite; Redis too where delivery semantics matter).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import httpx2
import pytest
from conftest import TEST_SECRET, owner
from test_extract import scripted

from proxy.cli.tasks import run_standalone
from proxy.config import Settings
from proxy.learn.extract import make_extractor
from proxy.learn.keys import KeyRing
from proxy.learn.turn import Turn, enqueue_turn
from proxy.learn.worker import Worker, standalone_problem
from proxy.memory.factory import create_memory_service
from proxy.memory.sealing import MemoryKeyStore
from proxy.state import JobPolicy, ManualClock
from proxy.state.sqlite import SqliteState

KEY = "sk-tenant-live-key-4f1c2a9e"
CONFIGURED = "sk-operator-extraction-key-77d0"


@pytest.fixture
def state_job_policy():
    """Leases long enough for a job to finish on a busy machine (real time on Redis), quick retries."""
    return JobPolicy(max_attempts=3, backoff_base=0.1, backoff_cap=0.2, lease_seconds=1.0, idempotency_retention=30)


@pytest.fixture
async def sqlite_state(tmp_path, state_job_policy):
    state = await SqliteState.open(tmp_path / "state.sqlite3", clock=ManualClock(), policy=state_job_policy)
    yield state
    await state.close()


@pytest.fixture
async def parts(tmp_path, emulator, local_embedder, memory_model_dir):
    """``make(state, **settings) -> Worker``; every worker of a test shares one memory service."""
    made: dict = {}
    workers: list[Worker] = []
    http = httpx2.AsyncClient()

    async def make(state, keys: KeyRing | None = None, **overrides) -> Worker:
        settings = Settings(
            upstream_url=emulator.base_url,
            data_dir=tmp_path,
            embed_model_path=memory_model_dir,
            memory_access_flush_seconds=3600,
            worker_poll_interval=0.02,
            **overrides,
        )
        if "memory" not in made:
            made["memory"] = await create_memory_service(
                settings, http, embedder=local_embedder, secret=TEST_SECRET, keys=MemoryKeyStore()
            )
        extractor, keys = make_extractor(settings, http), keys if keys is not None else ring()
        worker = Worker(state, made["memory"], extractor, settings, secret=TEST_SECRET, keys=keys)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.stop(grace=0)
    if "memory" in made:
        await made["memory"].aclose()
    await http.aclose()


def ring(tenant: str = "tenant-a", key: str = KEY) -> KeyRing:
    keys = KeyRing(ttl=600)
    keys.remember(tenant, key)
    return keys


def a_turn(*user: str, tenant: str = "tenant-a", subject: str = "alice", **source) -> Turn:
    return Turn(
        owner=owner(tenant, subject),
        route="assistants",
        turn_id=f"run_{uuid.uuid4().hex[:10]}",
        user=list(user),
        assistant=["Lyon is a lovely city!"],
        source={
            "thread_id": "thread_abc",
            "run_id": "run_xyz",
            "message_ids": ["msg_1"],
            "assistant_id": "asst_1",
            **source,
        },
        model="gpt-4o",
    )


async def later(state, seconds: float) -> None:
    """Let ``seconds`` pass for the queue: move the SQLite test clock, or wait (Redis runs on real time)."""
    if isinstance(state.clock, ManualClock):
        state.clock.advance(seconds)
    else:
        await asyncio.sleep(seconds)


async def texts(worker: Worker, tenant: str = "tenant-a", subject: str = "alice") -> list[str]:
    page = await worker.memory.of(owner(tenant, subject)).list()
    return sorted(m.text for m in page.memories)


# --- the plain case --------------------------------------------------------------------------------


async def test_a_finished_turn_becomes_memories_of_its_tenant_and_subject(parts, sqlite_state, emulator) -> None:
    worker = await parts(sqlite_state)
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon. My dog is Rex. Can you recommend a park?"))

    assert await worker.drain() == 1

    page = await worker.memory.of(owner("tenant-a", "alice")).list()
    assert sorted(m.text for m in page.memories) == ["I live in Lyon.", "My dog is Rex."]
    for memory in page.memories:
        assert memory.source.thread_id == "thread_abc" and memory.source.run_id == "run_xyz"
        assert memory.source.message_ids == ["msg_1"] and memory.assistant_id == "asst_1"
        assert memory.metadata["route"] == "assistants" and memory.metadata["extractor"] == "llm"
    assert await texts(worker, "tenant-a", "bob") == [] and await texts(worker, "tenant-b", "alice") == []
    assert await sqlite_state.pending_count() == 0
    assert worker.stats.snapshot() == {
        "claimed": 1,
        "processed": 1,
        "failed": 0,
        "dead_lettered": 0,
        "lost": 0,
        "ops": {"add": 2, "update": 0, "delete": 0},
        "unchanged": 0,
        "skipped": 0,
        "fenced": 0,
        "waiting": 0,
        "released": 0,
    }
    assert len(emulator.requests("/v1/chat/completions")) == 1


async def test_the_background_worker_picks_up_queued_turns_and_stops_cleanly(parts, sqlite_state) -> None:
    sqlite_state.clock = time.time  # the loops poll in real time
    worker = (await parts(sqlite_state)).start()
    await enqueue_turn(sqlite_state, a_turn("I work as a nurse."))
    worker.wake()
    for _ in range(200):
        if worker.stats.processed:
            break
        await asyncio.sleep(0.02)
    assert await texts(worker) == ["I work as a nurse."]
    await worker.stop()
    assert not worker.running


# --- decisions the model makes ---------------------------------------------------------------------


async def test_update_then_delete_decisions_are_applied_with_history_kept(parts, sqlite_state, emulator) -> None:
    worker = await parts(sqlite_state)
    lyon, _ = await worker.memory.of(owner("tenant-a", "alice")).remember("User lives in Lyon.")

    scripted(emulator, {"op": "update", "id": "m1", "text": "User lives in Paris."})
    await enqueue_turn(sqlite_state, a_turn("I moved to Paris last month."))
    await worker.drain()
    sent = emulator.requests("/v1/chat/completions")[-1]["body"]["messages"][1]["content"]
    assert '"id": "m1"' in sent and "User lives in Lyon." in sent and lyon.id not in sent

    updated = await worker.memory.of(owner("tenant-a", "alice")).get(lyon.id)
    assert updated.text == "User lives in Paris."
    assert [h.text for h in updated.history] == ["User lives in Lyon."]

    scripted(emulator, {"op": "delete", "id": "m1", "reason": "User left France."})
    await enqueue_turn(sqlite_state, a_turn("I don't live in France any more."))
    await worker.drain()

    assert await texts(worker) == []
    (gone,) = await worker.memory.of(owner("tenant-a", "alice")).export()
    assert gone.id == lyon.id and gone.deleted_reason == "User left France."
    assert [h.text for h in gone.history] == ["User lives in Lyon."]
    assert worker.stats.ops == {"update": 1, "delete": 1} and worker.stats.processed == 2


# --- failures --------------------------------------------------------------------------------------


async def test_a_model_answer_that_is_not_json_is_retried_then_dead_lettered(parts, state_factory, emulator) -> None:
    state = await state_factory()
    worker = await parts(state)
    scripted(emulator, content="Sure! Here are the facts: the user lives in Lyon.", times=0)  # every call
    job_id = await enqueue_turn(state, a_turn("I live in Lyon."))

    for _ in range(10):
        await worker.drain()
        if await state.dead_letters():
            break
        await later(state, 0.25)

    (dead,) = await state.dead_letters()
    assert dead.id == job_id and dead.attempts == 3
    assert "not JSON" in dead.last_error and "Lyon" not in dead.last_error
    assert len(emulator.requests("/v1/chat/completions")) == 3
    assert await texts(worker) == [] and await state.pending_count() == 0
    assert (worker.stats.failed, worker.stats.dead_lettered, worker.stats.processed) == (3, 1, 0)


async def test_an_upstream_5xx_is_retried_and_the_turn_still_becomes_memories(parts, state_factory, emulator) -> None:
    state = await state_factory()
    worker = await parts(state)
    emulator.fault(path="/chat/completions", status=503)
    await enqueue_turn(state, a_turn("I live in Lyon."))

    await worker.drain()
    assert await texts(worker) == [] and await state.pending_count() == 1
    assert worker.stats.failed == 1

    for _ in range(10):
        await later(state, 0.25)
        if await worker.drain():
            break
    assert await texts(worker) == ["I live in Lyon."]
    assert await state.pending_count() == 0 and await state.dead_letters() == []
    assert worker.stats.processed == 1


async def test_a_worker_dying_before_its_ack_leaves_the_job_to_be_replayed_once(
    parts, state_factory, monkeypatch
) -> None:
    state = await state_factory()
    first = await parts(state)
    original_ack = state.ack

    async def die(job):  # the process dies right after storing the memories, before acking
        asyncio.current_task().cancel()
        await asyncio.sleep(1)

    await enqueue_turn(state, a_turn("I live in Lyon."))
    monkeypatch.setattr(state, "ack", die)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(first.run_once())
    monkeypatch.setattr(state, "ack", original_ack)
    assert await texts(first) == ["I live in Lyon."]
    assert first.stats.processed == 0 and first.stats.failed == 0  # neither acked nor failed

    second = await parts(state)
    assert await second.run_once() == 0, "the lease still holds"
    await later(state, 1.1)
    assert await second.run_once() == 1

    assert await texts(second) == ["I live in Lyon."], "the replay adds nothing new"
    assert second.stats.unchanged == 1 and second.stats.processed == 1
    assert await state.pending_count() == 0


async def test_stop_abandons_a_job_in_flight_and_it_is_delivered_again(parts, state_factory, emulator) -> None:
    state = await state_factory()
    worker = (await parts(state)).start()
    emulator.fault(path="/chat/completions", delay=3)  # a slow model
    await enqueue_turn(state, a_turn("I live in Lyon."))
    worker.wake()
    for _ in range(200):
        if emulator.requests("/v1/chat/completions"):
            break
        await asyncio.sleep(0.02)

    started = asyncio.get_running_loop().time()
    await worker.stop(grace=0.1)
    assert asyncio.get_running_loop().time() - started < 1.5, "stop must not wait for the slow call"
    assert worker.stats.processed == worker.stats.failed == 0

    replay = await parts(state)
    await later(state, 1.1)
    assert await replay.run_once() == 1
    assert await texts(replay) == ["I live in Lyon."] and await state.pending_count() == 0


# --- credentials -----------------------------------------------------------------------------------


async def test_the_configured_key_wins_over_the_tenants_key(parts, sqlite_state, emulator) -> None:
    worker = await parts(sqlite_state, llm_api_key=CONFIGURED)
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon."))
    await worker.drain()
    (call,) = emulator.requests("/v1/chat/completions")
    assert call["headers"]["authorization"] == f"Bearer {CONFIGURED}"
    assert await texts(worker) == ["I live in Lyon."]


async def test_without_a_key_the_job_waits_for_a_live_request_of_its_tenant(parts, sqlite_state, emulator) -> None:
    keys = KeyRing(ttl=600)
    keys.remember("tenant-b", "sk-someone-else")  # another tenant's key is never borrowed
    worker = await parts(sqlite_state, keys=keys)
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon."))

    await worker.drain()
    assert emulator.requests("/v1/chat/completions") == []
    assert await sqlite_state.pending_count() == 1 and await sqlite_state.waiting_count() == 1
    assert (worker.stats.failed, worker.stats.waiting) == (0, 1), "waiting for a key burns no attempt"
    await later(sqlite_state, 3600)
    assert await worker.drain() == 0, "it waits for the key, not for a timer"
    assert await sqlite_state.dead_letters() == []

    keys.remember("tenant-a", KEY)  # the tenant's next live request
    await worker.drain()
    (call,) = emulator.requests("/v1/chat/completions")
    assert call["headers"]["authorization"] == f"Bearer {KEY}"
    assert await texts(worker) == ["I live in Lyon."]
    assert (worker.stats.released, worker.stats.processed, worker.stats.failed) == (1, 1, 0)


async def test_jobs_left_waiting_run_once_an_operator_key_is_configured(parts, sqlite_state, emulator) -> None:
    keys = KeyRing(ttl=600)
    keys.remember("tenant-b", "sk-someone-else")
    keyless = await parts(sqlite_state, keys=keys)
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon."))
    await keyless.drain()
    assert await sqlite_state.waiting_count() == 1

    restarted = await parts(sqlite_state, keys=KeyRing(ttl=600), llm_api_key=CONFIGURED)
    assert await restarted.drain() == 1
    assert await texts(restarted) == ["I live in Lyon."] and await sqlite_state.waiting_count() == 0


async def test_an_idle_worker_without_any_key_does_not_burn_attempts(parts, sqlite_state) -> None:
    sqlite_state.clock = time.time
    keys = KeyRing(ttl=600)
    worker = (await parts(sqlite_state, keys=keys)).start()
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon."))
    await asyncio.sleep(0.2)  # ten poll intervals
    assert worker.stats.claimed == 0 and await sqlite_state.pending_count() == 1

    keys.remember("tenant-a", KEY)  # the first live request after a restart
    worker.wake()
    for _ in range(200):
        if worker.stats.processed:
            break
        await asyncio.sleep(0.02)
    assert (worker.stats.claimed, worker.stats.failed, worker.stats.processed) == (1, 0, 1)
    assert await texts(worker) == ["I live in Lyon."]


async def test_keys_never_reach_the_state_store_or_the_logs(parts, tmp_path, sqlite_state, emulator, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    worker = await parts(sqlite_state)
    # the upstream echoes the key in its error, as OpenAI does for a wrong key
    emulator.fault(
        path="/chat/completions",
        status=401,
        code="invalid_api_key",
        message=f"Incorrect API key provided: {KEY}.",
        times=3,
    )
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon. My secret hobby is falconry."))
    for _ in range(4):
        await worker.drain()
        await later(sqlite_state, 1)
    (dead,) = await sqlite_state.dead_letters()
    assert dead.last_error == "the upstream answered HTTP 401 (invalid_api_key)"

    await enqueue_turn(sqlite_state, a_turn("I like green tea."))
    await worker.drain()
    assert await texts(worker) == ["I like green tea."]

    await sqlite_state.close()
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("state.sqlite3*"))
    assert KEY.encode() not in stored and KEY[-12:].encode() not in stored
    assert "sk-" not in repr(worker.keys)
    logged = caplog.text
    assert KEY not in logged and "falconry" not in logged and "green tea" not in logged
    assert dead.id in logged, "failures are logged, by job id"


async def test_keys_never_reach_redis(parts, redis_server_url, state_job_policy, emulator) -> None:
    import redis.asyncio as aioredis

    from proxy.state.redis import RedisState

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    state = await RedisState.connect(redis_server_url, prefix=prefix, policy=state_job_policy)
    try:
        worker = await parts(state)
        emulator.fault(path="/chat/completions", status=500, message=f"boom {KEY}")
        await enqueue_turn(state, a_turn("I live in Lyon."))
        await worker.drain()
        await asyncio.sleep(0.25)
        await worker.drain()
        assert await texts(worker) == ["I live in Lyon."]
    finally:
        await state.close()
    client = aioredis.Redis.from_url(redis_server_url)
    try:
        dump = []
        async for name in client.scan_iter(match=f"{prefix}:*"):
            kind = (await client.type(name)).decode()
            if kind == "string":
                dump.append(await client.get(name))
            elif kind == "hash":
                dump += [k + v for k, v in (await client.hgetall(name)).items()]
            elif kind == "list":
                dump += await client.lrange(name, 0, -1)
            elif kind in ("set", "zset"):
                dump += list(await client.smembers(name)) if kind == "set" else await client.zrange(name, 0, -1)
            elif kind == "stream":
                dump += [repr(entry).encode() for entry in await client.xrange(name)]
        assert dump, "the scan found the queue's keys"
        assert not any(KEY.encode() in item for item in dump)
    finally:
        await client.aclose()


# --- the verbatim extractor ------------------------------------------------------------------------


async def test_verbatim_worker_stores_user_messages_without_calling_the_llm(parts, sqlite_state, emulator) -> None:
    worker = await parts(sqlite_state, extractor="verbatim", keys=KeyRing())  # no key needed at all
    await enqueue_turn(sqlite_state, a_turn("I live in Lyon and my dog is Rex"))
    await worker.drain()
    assert await texts(worker) == ["I live in Lyon and my dog is Rex"]
    (memory,) = (await worker.memory.of(owner("tenant-a", "alice")).list()).memories
    assert memory.metadata["extractor"] == "verbatim" and memory.source.run_id == "run_xyz"
    assert emulator.requests() == []


async def test_ids_of_responses_and_chat_turns_are_kept_with_the_memory(parts, sqlite_state) -> None:
    worker = await parts(sqlite_state, extractor="verbatim")
    chat = Turn(
        owner("tenant-a", "alice"),
        "chat",
        "chatcmpl-1",
        ["I speak Italian."],
        ["Bene!"],
        {"completion_id": "chatcmpl-1", "conversation_id": None},
        "gpt-4o",
    )
    await enqueue_turn(sqlite_state, chat)
    await worker.drain()
    (memory,) = (await worker.memory.of(owner("tenant-a", "alice")).list()).memories
    assert memory.metadata == {
        "route": "chat",
        "turn_id": "chatcmpl-1",
        "extractor": "verbatim",
        "source": {"completion_id": "chatcmpl-1"},
    }


# --- memproxy worker, and the worker inside memproxy serve -----------------------------------------


async def test_memproxy_worker_drains_the_shared_queue(tmp_path, emulator, local_embedder, memory_model_dir) -> None:
    settings = Settings(
        upstream_url=emulator.base_url, data_dir=tmp_path, embed_model_path=memory_model_dir, llm_api_key=CONFIGURED
    )
    async with await SqliteState.open(tmp_path / "state.sqlite3") as state:  # a proxy queued it
        await enqueue_turn(state, a_turn("I live in Lyon."))

    stats = await run_standalone(settings, once=True, embedder=local_embedder)

    assert stats.processed == 1 and stats.ops["add"] == 1
    from proxy.identity import load_secret
    from proxy.memory.sealing import StateKeyStore
    from proxy.owner import Owner

    secret = load_secret(settings)  # what the worker sealed with: the data directory's secret and key store
    async with await SqliteState.open(tmp_path / "state.sqlite3") as state:
        service = await create_memory_service(
            settings, embedder=local_embedder, secret=secret, keys=StateKeyStore(lambda: state)
        )
        try:
            alice = Owner.of(secret, "tenant-a", "alice")
            assert [m.text for m in (await service.of(alice).list()).memories] == ["I live in Lyon."]
        finally:
            await service.aclose()


def test_memproxy_worker_command(tmp_path, monkeypatch, memory_model_dir) -> None:
    from typer.testing import CliRunner

    from proxy.cli import app

    for name in ("MEMPROXY_LLM_API_KEY", "MEMPROXY_EXTRACTOR", "MEMPROXY_EMBEDDER", "MEMPROXY_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEMPROXY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEMPROXY_EMBED_MODEL_PATH", str(memory_model_dir))
    runner = CliRunner()

    refused = runner.invoke(app, ["worker", "--once"])
    assert refused.exit_code == 2 and "MEMPROXY_LLM_API_KEY" in refused.output
    assert standalone_problem(Settings(extractor="verbatim")) is None

    async def queue() -> None:
        async with await SqliteState.open(tmp_path / "state.sqlite3") as state:
            await enqueue_turn(state, a_turn("I have two cats."))

    asyncio.run(queue())
    monkeypatch.setenv("MEMPROXY_EXTRACTOR", "verbatim")
    done = runner.invoke(app, ["worker", "--once"])
    assert done.exit_code == 0, done.output
    assert "1 jobs done" in done.output


def test_the_proxy_runs_the_worker_in_process(make_proxy) -> None:
    from proxy.client import Memory

    proxy = make_proxy(
        extractor="verbatim",
        tenant="tenant-in-proxy",
        admin_token="admin-in-proxy",  # a fixed tenant's memory API answers its admin token only
        worker_poll_interval=0.1,
        worker_in_proxy=True,
    )
    runtime = proxy.app.state.runtime
    assert runtime.worker is not None and runtime.worker.running
    assert isinstance(runtime.keys, KeyRing)

    async def queue() -> None:
        path = proxy.app.state.settings.data_dir / "state.sqlite3"
        async with await SqliteState.open(path) as state:
            await enqueue_turn(state, a_turn("I drive an electric car.", tenant="tenant-in-proxy", subject="carol"))

    asyncio.run(queue())
    with Memory(proxy.url, api_key="admin-in-proxy") as client:
        for _ in range(100):
            found = client.user("carol").list()["data"]
            if found and runtime.worker.stats.processed:  # the memory is written just before the job is acked
                break
            time.sleep(0.05)
    assert [m["text"] for m in found] == ["I drive an electric car."]
    assert runtime.worker.stats.processed == 1
