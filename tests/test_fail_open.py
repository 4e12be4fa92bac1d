"""Fail open, lose nothing: the proxy serves with its stores down, and every finished turn is learned.

Real parts throughout: ``redis-server`` processes killed with SIGKILL and started again on the same
port (with an fsynced append-only file where a restart must keep the queue), the emulator upstream,
the offline embedding model, Qdrant Edge, and ``memproxy serve`` itself as a child process. Turns are
counted by what the memory API finally holds for each user: one memory per turn, none missing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from conftest import FAST_RECONNECT, _free_port, kill, learning_proxy_on_redis, redis_server

from proxy.config import Settings, split_problem
from proxy.runtime import SplitDeployment, open_runtime


def wait_for(check: Callable[[], Any], timeout: float = 30.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message or check}")


def memories(proxy, key: str, user: str) -> list[str]:
    answer = httpx.get(f"{proxy.url}/memory/v1/users/{user}/memories", headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return [memory["text"] for memory in answer.json()["data"]]


def chat(proxy, key: str, user: str, text: str):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    try:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], user=user
        )
    finally:
        client.close()


def respond(proxy, key: str, user: str, text: str):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    try:
        return client.responses.with_raw_response.create(model="gpt-4o-mini", input=text, safety_identifier=user)
    finally:
        client.close()


def scrape(proxy) -> dict[str, float]:
    lines = httpx.get(proxy.url + "/metrics").text.splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}


def metric(proxy, name: str) -> float:
    found = scrape(proxy)
    assert name in found, f"{name} not exported"
    return found[name]


# --- configurations that would split a user's data are refused --------------------------------------


async def test_shared_state_with_per_replica_memories_is_refused_before_anything_opens(tmp_path) -> None:
    for given, missing in (
        ({"redis_url": "redis://127.0.0.1:1/0", "secret": "s"}, "MEMPROXY_QDRANT_URL"),
        ({"qdrant_url": "http://127.0.0.1:1"}, "MEMPROXY_REDIS_URL"),
    ):
        settings = Settings(data_dir=tmp_path / "data", **given)
        with pytest.raises(SplitDeployment) as refused:
            async with open_runtime(settings):
                pass
        assert missing in str(refused.value) and "MEMPROXY_SINGLE_REPLICA=true" in str(refused.value)
        assert not (tmp_path / "data").exists(), "refused before anything was opened or written"
        assert split_problem(settings.model_copy(update={"single_replica": True})) is None
    both = Settings(redis_url="redis://r:6379/0", qdrant_url="http://q:6333")
    assert split_problem(both) is None and split_problem(Settings()) is None


def test_memproxy_serve_refuses_to_start_with_a_split_configuration(tmp_path) -> None:
    env = {
        **os.environ,
        "MEMPROXY_DATA_DIR": str(tmp_path),
        "MEMPROXY_REDIS_URL": "redis://127.0.0.1:1/0",
        "MEMPROXY_SECRET": "s",
        "MEMPROXY_PORT": str(_free_port()),
    }
    env.pop("MEMPROXY_QDRANT_URL", None)
    env.pop("MEMPROXY_SINGLE_REPLICA", None)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "MEMPROXY_QDRANT_URL" in done.stderr and "MEMPROXY_SINGLE_REPLICA" in done.stderr, done.stderr[-2000:]


# --- Redis down at boot --------------------------------------------------------------------------------


def test_redis_down_at_boot_forwards_at_once_and_delivers_every_turn_once_it_starts(make_proxy, emulator) -> None:
    port, key, n = _free_port(), "sk-boot-" + uuid.uuid4().hex[:8], 12
    proxy = make_proxy(
        redis_url=f"redis://127.0.0.1:{port}/0",
        secret="boot-secret",
        single_replica=True,
        redis_prefix="boot-" + uuid.uuid4().hex[:8],
        worker_in_proxy=True,
        extractor="verbatim",
        **FAST_RECONNECT,
    )
    runtime = proxy.app.state.runtime
    try:
        ready = httpx.get(proxy.url + "/readyz")
        assert ready.status_code == 200, "serving: forwarding needs no Redis"
        assert "ConnectionError" in ready.json()["checks"]["state"] and ready.json()["checks"]["forwarding"] == "ok"
        assert httpx.get(proxy.url + "/readyz/memory").status_code == 503

        users = [f"boot-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
        for i, user in enumerate(users):
            answer = chat(proxy, key, user, f"My locker number is {1000 + i}.")
            assert answer.parse().choices[0].message.content.startswith("You said")
        # hooks that need the state store before the call fail open: degraded, forwarded as sent
        conversation = openai.OpenAI(base_url=emulator.base_url, api_key=key).conversations.create()
        with_conversation = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
        raw = with_conversation.responses.with_raw_response.create(
            model="gpt-4o-mini", input="Hello", conversation=conversation.id, safety_identifier=users[0]
        )
        with_conversation.close()
        assert raw.headers["x-memory-status"] == "degraded" and raw.parse().status == "completed"
        thread = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0).beta.threads.create(
            metadata={"user_id": users[0]}
        )
        assert thread.id.startswith("thread_")

        wait_for(lambda: runtime.counters["turns.spooled"] == n, message="every turn spooled")
        assert runtime.spool.pending == n and runtime.counters["turns.lost"] == 0
        assert metric(proxy, "memproxy_spool_depth") == n and metric(proxy, "memproxy_state_up") == 0
        assert metric(proxy, 'memproxy_backend_retries_total{part="state"}') >= 1

        with redis_server(port=port):
            started = time.monotonic()
            wait_for(lambda: runtime.store is not None, timeout=5, message="the state store within the backoff")
            opened_in = time.monotonic() - started
            wait_for(lambda: runtime.spool.pending == 0, message="the spool delivered")
            wait_for(lambda: runtime.worker is not None and runtime.worker.stats.processed >= n, message="learned")
            found = {user: memories(proxy, key, user) for user in users}
            assert httpx.get(proxy.url + "/readyz/memory").status_code == 200
            assert httpx.get(proxy.url + "/readyz").json()["status"] == "ready"
    finally:
        proxy.stop()
    assert opened_in < 2.0, f"Redis was opened {opened_in:.1f}s after it started (backoff cap 0.5s)"
    lost = [user for i, user in enumerate(users) if found[user] != [f"My locker number is {1000 + i}."]]
    assert not lost, f"{len(lost)} of {n} turns lost: {lost}"
    assert runtime.counters["turns.delivered"] == n and runtime.counters["turns.lost"] == 0


def test_a_turn_neither_the_store_nor_the_spool_takes_is_counted_exactly(make_proxy, emulator, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "spool.sqlite3").write_bytes(b"not a database" * 100)  # a broken disk, as far as the spool knows
    proxy = make_proxy(
        data_dir=data,
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
        secret="s",
        single_replica=True,
        **FAST_RECONNECT,
    )
    try:
        answer = chat(proxy, "sk-lost", "lost-user", "I have a red bicycle.")
        assert answer.parse().choices[0].message.content.startswith("You said"), "the client has its answer"
        runtime = proxy.app.state.runtime
        wait_for(lambda: runtime.counters["turns.lost"] == 1, message="the lost turn counted")
        assert metric(proxy, "memproxy_turns_lost_total") == 1 and runtime.counters["turns.spooled"] == 0
    finally:
        proxy.stop()


# --- Redis killed mid-run and restarted ------------------------------------------------------------------


def test_redis_killed_and_restarted_mid_run_loses_no_turn_and_no_job(make_proxy, emulator, tmp_path) -> None:
    port, key = _free_port(), "sk-kill-" + uuid.uuid4().hex[:8]
    aof = tmp_path / "redis"
    users: list[tuple[str, str]] = []

    def say(proxy, phase: str, count: int) -> None:
        for _ in range(count):
            user, number = f"kill-{uuid.uuid4().hex[:8]}", 100 + len(users)
            text = f"I keep my bike in locker {number}."
            assert respond(proxy, key, user, text).parse().status == "completed"
            users.append((user, text))

    emulator.fault(path="/v1/chat/completions", delay=0.3, times=0)  # the extraction model is slow: jobs pile up
    try:
        with redis_server(port=port, data_dir=aof) as (url, process):
            proxy = learning_proxy_on_redis(make_proxy, url, "kill")
            runtime = proxy.app.state.runtime
            say(proxy, "before", 10)
            wait_for(lambda: runtime.counters["turns.captured"] == 10, message="queued before the kill")
            queued_at_kill = 10 - runtime.worker.stats.processed
            kill(process)
        assert queued_at_kill >= 3, "the outage must find jobs in the queue"
        say(proxy, "outage", 10)
        wait_for(lambda: runtime.counters["turns.spooled"] == 10, message="turns of the outage spooled")
        assert httpx.get(proxy.url + "/readyz").status_code == 200
        assert httpx.get(proxy.url + "/readyz").json()["checks"]["state"].startswith("unavailable")
        with redis_server(port=port, data_dir=aof):  # the same server comes back with its append-only file
            say(proxy, "after", 5)
            wait_for(lambda: runtime.spool.pending == 0, message="the spool delivered")
            wait_for(
                lambda: all(memories(proxy, key, user) for user, _ in users), timeout=90, message="every turn learned"
            )
            found = {user: memories(proxy, key, user) for user, _ in users}
            # a job that failed while Redis was away is retried after its backoff: every job ends done
            numbers = wait_for(
                lambda: (
                    (found := scrape(proxy)).get("memproxy_queue_depth") == 0
                    and "memproxy_dead_letters" in found
                    and found
                ),
                timeout=30,
                message="an empty queue",
            )
            dead, depth = numbers["memproxy_dead_letters"], numbers["memproxy_queue_depth"]
    finally:
        emulator.clear_faults()
        proxy.stop()
    lost = [user for user, text in users if found[user] != [text]]
    assert not lost, f"{len(lost)} of {len(users)} turns lost"
    assert (dead, depth) == (0, 0), "every job done, none dead-lettered"
    counters = runtime.counters
    assert (counters["turns.captured"], counters["turns.lost"]) == (25, 0)
    assert counters["turns.spooled"] >= 10 and counters["turns.delivered"] == counters["turns.spooled"], (
        "the outage's turns, and those that finished behind them before the spool was delivered (order kept)"
    )


# --- a tenant without a key since the restart ------------------------------------------------------------


def test_a_keyless_tenants_jobs_wait_for_its_next_request_without_spending_attempts(
    make_proxy, emulator, tmp_path
) -> None:
    data = tmp_path / "data"
    key_a, key_b = "sk-tenant-a-" + uuid.uuid4().hex[:6], "sk-tenant-b-" + uuid.uuid4().hex[:6]
    before = make_proxy(data_dir=data)  # no worker: jobs stay queued, as at a crash
    users = [f"waiter-{i}" for i in range(3)]
    for i, user in enumerate(users):
        chat(before, key_a, user, f"I was born in {1980 + i}.")
    wait_for(lambda: before.app.state.runtime.counters["turns.captured"] == 3, message="tenant A's turns queued")
    before.stop()  # restart: the key ring is gone, and there is no MEMPROXY_LLM_API_KEY

    proxy = make_proxy(data_dir=data, worker_in_proxy=True, job_max_attempts=2, job_backoff_base=0.05, **FAST_RECONNECT)
    runtime = proxy.app.state.runtime
    try:
        chat(proxy, key_b, "b-user", "I drink green tea.")  # another tenant comes back first
        wait_for(lambda: runtime.worker.stats.processed == 1, message="tenant B's own job")
        wait_for(lambda: runtime.worker.stats.waiting == 3, message="tenant A's jobs given back to wait")
        time.sleep(1.0)  # twenty backoffs: burning attempts would have dead-lettered them long ago
        assert metric(proxy, "memproxy_jobs_waiting_for_key") == 3
        assert metric(proxy, "memproxy_dead_letters") == 0
        assert metric(proxy, 'memproxy_jobs_total{outcome="waiting"}') == 3
        with sqlite3.connect(data / "state.sqlite3") as db:
            rows = db.execute("SELECT status, attempts FROM jobs WHERE status != 'done'").fetchall()
        assert rows == [("waiting", 0)] * 3, "waiting spent no attempt"
        extractions = [r for r in emulator.requests("/v1/chat/completions") if "response_format" in r["body"]]
        assert all(key_a not in r["headers"]["authorization"] for r in extractions)

        chat(proxy, key_a, "a-later", "Hello again.")  # tenant A's next request brings its key
        wait_for(lambda: all(memories(proxy, key_a, user) for user in users), message="tenant A's jobs ran")
        found = [memories(proxy, key_a, user) for user in users]
        assert metric(proxy, "memproxy_jobs_waiting_for_key") == 0
        assert runtime.worker.stats.failed == 0 and runtime.worker.stats.released == 3
    finally:
        proxy.stop()
    assert found == [[f"I was born in {1980 + i}."] for i in range(3)]
    extractions = [r for r in emulator.requests("/v1/chat/completions") if "response_format" in r["body"]]
    assert sum(r["headers"]["authorization"] == f"Bearer {key_a}" for r in extractions) >= 3


# --- the spool is erased with the user ------------------------------------------------------------------


async def test_an_erasure_drops_the_users_spooled_turns(tmp_path, emulator, local_embedder) -> None:
    from conftest import TEST_SECRET

    from proxy.erasure import erase_subject
    from proxy.learn.turn import Turn
    from proxy.owner import Owner

    settings = Settings(upstream_url=emulator.base_url, data_dir=tmp_path, secret=TEST_SECRET.decode())
    async with open_runtime(settings, embedder=local_embedder) as runtime:
        alice, bob = (Owner.of(runtime.secret, "tenant-a", name) for name in ("alice", "bob"))
        for n, who in enumerate((alice, alice, bob)):  # spooled while the state store was away
            await runtime.spool.append(Turn(who, "chat", f"chatcmpl-{n}", [f"I am fact {n}."], ["ok"]))
        report = await erase_subject(runtime, alice, keep_upstream=True)
        assert report.counts["jobs"] == 2, "spooled turns count as the pending jobs they would have become"
        assert runtime.spool.pending == 1 and await runtime.spool.depth() == 1
        [left] = await runtime.spool.oldest()
        assert left.payload["subject"] == "bob"
