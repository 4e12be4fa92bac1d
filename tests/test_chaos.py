"""Chaos on real parts: turns keep flowing while something breaks, and every turn is accounted for.

Each test runs traffic from several client threads (a unique user per turn, so a user's memories
are that one turn's), breaks a real part in the middle of it, and then counts: every turn whose
answer reached its client complete is learned exactly once, and no other turn is learned.
``MEMPROXY_EXTRACTOR=verbatim`` (or the emulator's extraction model, which keeps the user's words)
makes a turn's memory its user text, so "learned" is read back through the memory API.

- Redis SIGKILLed and restarted on the same port with its fsynced append-only file, under Chat and
  Responses traffic, streamed and not (:func:`test_redis_killed_and_restarted_under_traffic_loses_no_turn`).
- A slow and a cut upstream (the emulator's faults: delay, drop_after, 5xx) registered while traffic
  runs: each client sees what the upstream did, matched by ``x-request-id`` to the emulator's record
  of what it did (:func:`test_slow_and_cut_upstream_each_client_sees_what_the_upstream_did`).
- ``memproxy serve`` itself SIGKILLed with extraction jobs queued and calls in flight, then started
  again on its data directory (:func:`test_proxy_killed_mid_traffic_processes_every_queued_job_once`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from conftest import FAST_RECONNECT, _free_port, kill, learning_proxy_on_redis, redis_server

MODEL = "gpt-4o-mini"


# --- helpers ---------------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float = 30.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message or check}")


def memories(url: str, key: str, user: str) -> list[str]:
    answer = httpx.get(f"{url}/memory/v1/users/{user}/memories", headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return [memory["text"] for memory in answer.json()["data"]]


def scrape(url: str) -> dict[str, float]:
    lines = httpx.get(url + "/metrics").text.splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}


@dataclass
class Turn:
    """One client call: what was said, how it went, as the client saw it."""

    user: str
    text: str
    route: str  # chat | responses
    stream: bool
    completed: bool = False
    status: int | None = None
    error: str | None = None
    request_id: str | None = None
    body: bytes = b""
    seconds: float = 0.0


@dataclass
class Traffic:
    """Client threads, each sending one turn after another until stopped; every turn is kept."""

    send: Callable[[Turn], None]
    threads: int = 4
    prefix: str = "chaos"
    kinds: tuple[tuple[str, bool], ...] = (("chat", False), ("responses", False), ("chat", True), ("responses", True))
    """(route, streamed) of each turn, in turn."""
    turns: list[Turn] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _running: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        self._running = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(self.threads)]
        for thread in self._running:
            thread.start()
        return self

    def finish(self) -> list[Turn]:
        """Stop sending, wait for the turns in flight; every turn sent."""
        self.stop.set()
        for thread in self._running:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._running), "a client thread hung"
        return list(self.turns)

    def _loop(self, n: int) -> None:
        sent = 0
        while not self.stop.is_set():
            route, stream = self.kinds[(sent + n) % len(self.kinds)]
            user = f"{self.prefix}-{n}-{sent}-{uuid.uuid4().hex[:6]}"
            turn = Turn(user, f"My {route} locker code is {uuid.uuid4().hex[:8]}.", route, stream)
            started = time.monotonic()
            try:
                self.send(turn)
            except Exception as exc:  # noqa: BLE001 - the turn records what the client saw
                turn.error = f"{type(exc).__name__}: {exc}"[:300]
            turn.seconds = time.monotonic() - started
            with self.lock:
                self.turns.append(turn)
            sent += 1

    def count(self, predicate: Callable[[Turn], bool] = lambda turn: True) -> int:
        with self.lock:
            return sum(1 for turn in self.turns if predicate(turn))

    def wait_completed(self, more: int, timeout: float = 30.0) -> None:
        target = self.count(lambda t: t.completed) + more
        wait_for(lambda: self.count(lambda t: t.completed) >= target, timeout, f"{more} more completed turns")


def sdk_sender(base_url: str, key: str) -> Callable[[Turn], None]:
    """A turn through the real openai SDK: Chat with ``user``, Responses with ``safety_identifier``."""
    local = threading.local()

    def send(turn: Turn) -> None:
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)
        client: openai.OpenAI = local.client
        if turn.route == "chat":
            messages = [{"role": "user", "content": turn.text}]
            if turn.stream:
                chunks = list(
                    client.chat.completions.create(model=MODEL, messages=messages, user=turn.user, stream=True)
                )
                turn.completed = any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
            else:
                answer = client.chat.completions.create(model=MODEL, messages=messages, user=turn.user)
                turn.completed = answer.choices[0].finish_reason == "stop"
        elif turn.stream:
            events = list(
                client.responses.create(model=MODEL, input=turn.text, safety_identifier=turn.user, stream=True)
            )
            turn.completed = events[-1].type == "response.completed"
        else:
            response = client.responses.create(model=MODEL, input=turn.text, safety_identifier=turn.user)
            turn.completed = response.status == "completed"
        turn.status = 200

    return send


def learned(url: str, key: str, turns: list[Turn]) -> dict[str, list[str]]:
    return {turn.user: memories(url, key, turn.user) for turn in turns}


def account(found: dict[str, list[str]], turns: list[Turn]) -> dict[str, int]:
    """Lost (completed, not learned), duplicated (learned more than once) and unearned (learned, not completed)."""
    done = [t for t in turns if t.completed]
    return {
        "sent": len(turns),
        "completed": len(done),
        "learned": sum(found[t.user] == [t.text] for t in done),
        "lost": sum(t.text not in found[t.user] for t in done),
        "duplicated": sum(len(found[t.user]) > 1 for t in turns),
        "unearned": sum(bool(found[t.user]) for t in turns if not t.completed),
    }


# --- a. Redis SIGKILLed mid-traffic, restarted on the same port with its AOF -------------------------


def test_redis_killed_and_restarted_under_traffic_loses_no_turn(make_proxy, emulator, tmp_path) -> None:
    port, key = _free_port(), "sk-chaos-redis-" + uuid.uuid4().hex[:8]
    aof = tmp_path / "redis"
    # The upstream's chat model is slow (0.15 s), for the clients' chat calls and for the extraction
    # calls alike: jobs pile up in the queue, so the kill finds some queued and some in flight.
    emulator.fault(path="/v1/chat/completions", delay=0.15, times=0)
    with redis_server(port=port, data_dir=aof) as (url, process):
        proxy = learning_proxy_on_redis(make_proxy, url, "chaos")
        runtime = proxy.app.state.runtime
        traffic = Traffic(sdk_sender(proxy.url + "/v1", key), threads=4, prefix="redis").start()
        try:
            traffic.wait_completed(16)
            queued_at_kill = scrape(proxy.url)["memproxy_queue_depth"]
            kill(process)  # SIGKILL, clients still sending
            killed_at = traffic.count()
            traffic.wait_completed(12)  # turns answered while Redis is gone
            wait_for(lambda: runtime.counters["turns.spooled"] > 0, 10, "a turn of the outage spooled")
            with redis_server(port=port, data_dir=aof):  # the same server, its append-only file replayed
                restarted_at = traffic.count()
                traffic.wait_completed(12)
                turns = traffic.finish()
                done = [t for t in turns if t.completed]
                wait_for(lambda: runtime.spool.pending == 0, 30, "the spool delivered")
                wait_for(
                    lambda: runtime.worker is not None and runtime.worker.stats.processed >= len(done),
                    60,
                    "every job processed",
                )
                numbers = wait_for(
                    lambda: (m := scrape(proxy.url)).get("memproxy_queue_depth") == 0 and m, 30, "an empty queue"
                )
                found = learned(proxy.url, key, turns)
        finally:
            traffic.stop.set()
            emulator.clear_faults()
            proxy.stop()
    counts = account(found, turns)
    failed = [t.error for t in turns if not t.completed]
    print(
        f"\nredis chaos: {counts}; jobs queued at the kill {queued_at_kill:.0f}; turns sent before the kill "
        f"{killed_at}, during the outage {restarted_at - killed_at}, after {len(turns) - restarted_at}; "
        f"spooled {runtime.counters['turns.spooled']}, "
        f"delivered {runtime.counters['turns.delivered']}, jobs processed {runtime.worker.stats.processed}, "
        f"dead letters {numbers['memproxy_dead_letters']}"
    )
    assert not failed, f"forwarding never depends on Redis: {failed[:3]}"
    assert queued_at_kill >= 2, "the kill must find jobs in the queue"
    assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["learned"] == len(done), counts
    assert numbers["memproxy_dead_letters"] == 0 and numbers["memproxy_queue_depth"] == 0
    assert runtime.counters["turns.lost"] == 0
    assert runtime.counters["turns.delivered"] == runtime.counters["turns.spooled"] > 0
    assert {t.route for t in done} == {"chat", "responses"} and {t.stream for t in done} == {True, False}


# --- b. a slow and a cut upstream, during traffic ---------------------------------------------------

CLIENT_TIMEOUT = 1.0
"""Seconds a client of test b waits for a byte; a longer upstream delay makes it give up."""

UPSTREAM_FAULTS = [
    {"path": "/v1/chat/completions", "status": 500, "times": 2},
    {"path": "/v1/responses", "status": 503, "times": 2},
    {"path": "/v1/chat/completions", "drop_after": 3, "times": 3},  # 3 SSE events, or 3 bytes of JSON
    {"path": "/v1/responses", "drop_after": 3, "times": 3},
    {"path": "/v1/chat/completions", "delay": 0.3, "times": 2},  # slow, answered
    {"path": "/v1/responses", "delay": 0.3, "times": 2},
    {"path": "/v1", "delay": 3.0, "times": 2},  # slower than the client waits: abandoned
    {"path": "/v1", "event_delay": 0.05, "times": 2},  # a slow stream (a JSON body is one chunk)
]


def raw_sender(base: str, key: str) -> Callable[[Turn], None]:
    """A turn as raw HTTP (httpx), keeping every byte the client got and how the body ended."""
    local = threading.local()
    headers = {"authorization": f"Bearer {key}"}

    def send(turn: Turn) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=httpx.Timeout(CLIENT_TIMEOUT, connect=5.0))
        client: httpx.Client = local.client
        if turn.route == "chat":
            path = "/v1/chat/completions"
            body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": turn.text}]}
            body["user"] = turn.user
        else:
            path, body = "/v1/responses", {"model": MODEL, "input": turn.text, "safety_identifier": turn.user}
        with client.stream("POST", base + path, json={**body, "stream": turn.stream}, headers=headers) as response:
            turn.status, turn.request_id = response.status_code, response.headers.get("x-request-id")
            try:
                for chunk in response.iter_raw():
                    turn.body += chunk
            except httpx.HTTPError as exc:
                turn.error = f"{type(exc).__name__}: {exc}"[:300]
                return
        turn.completed = turn.status == 200

    return send


def sse_events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event.strip()]


def expected_outcome(record: dict[str, Any]) -> str:
    """What the upstream did with a request, from the emulator's record of it."""
    fault = record["fault"]
    if fault is None:
        return "answered"
    if fault["delay"] >= CLIENT_TIMEOUT:
        return "abandoned"
    if fault["status"]:
        return "error"
    if fault["drop_after"] is not None:
        return "cut"
    return "answered"


def check_seen(turn: Turn, record: dict[str, Any], outcome: str) -> str | None:
    """Why what the client saw differs from what the upstream did, or None."""
    from proxy.emulator.control import Fault

    if outcome == "abandoned":
        return None if turn.status is None and "Timeout" in (turn.error or "") else "not abandoned"
    if turn.request_id != record["request_id"]:
        return f"x-request-id {turn.request_id} is not the upstream's {record['request_id']}"
    fault = record["fault"]
    if outcome == "error":
        sent = Fault(**fault).error_body()
        return None if turn.status == fault["status"] and json.loads(turn.body) == sent else "error not relayed as sent"
    if outcome == "cut":
        if turn.status != 200 or turn.completed or "RemoteProtocolError" not in (turn.error or ""):
            return f"cut not seen as cut: {turn.status} {turn.error}"
        got = len(sse_events(turn.body)) if turn.stream else len(turn.body)
        return (
            None if got == fault["drop_after"] else f"{got} events or bytes before the cut, not {fault['drop_after']}"
        )
    if not turn.completed:
        return f"answered upstream, not complete here: {turn.status} {turn.error}"
    if fault and turn.seconds < fault["delay"]:
        return f"answered in {turn.seconds:.2f}s, before the upstream's delay of {fault['delay']}s"
    if turn.stream:
        last = sse_events(turn.body)[-1]
        ended = last == b"data: [DONE]" if turn.route == "chat" else last.startswith(b"event: response.completed")
        return None if ended else f"stream ended with {last[:60]!r}"
    return None if json.loads(turn.body).get("id") else "no id in the answer"


def test_slow_and_cut_upstream_each_client_sees_what_the_upstream_did(make_proxy, emulator) -> None:
    key = "sk-chaos-upstream-" + uuid.uuid4().hex[:8]
    proxy = make_proxy(worker_in_proxy=True, extractor="verbatim", **FAST_RECONNECT)
    runtime = proxy.app.state.runtime
    traffic = Traffic(raw_sender(proxy.url, key), threads=4, prefix="upstream").start()
    try:
        traffic.wait_completed(8)
        for fault in UPSTREAM_FAULTS:  # registered while the clients keep sending
            emulator.fault(**fault)
        wait_for(lambda: not emulator.faults(), 30, "every fault used")
        traffic.wait_completed(8)
        turns = traffic.finish()
        wait_for(lambda: runtime.forwarder.waiting == 0 and runtime.forwarder.open_responses == 0, 5, "calls closed")
        done = [t for t in turns if t.completed]
        wait_for(lambda: runtime.worker.stats.processed >= len(done), 30, "every completed turn processed")
        found = learned(proxy.url, key, turns)
        records = emulator.requests()
    finally:
        traffic.stop.set()
        emulator.clear_faults()
        proxy.stop()
    by_user = {r["body"].get("user") or r["body"].get("safety_identifier"): r for r in records}
    outcomes = {t.user: expected_outcome(by_user[t.user]) for t in turns}
    wrong = {t.user: why for t in turns if (why := check_seen(t, by_user[t.user], outcomes[t.user]))}
    counts = account(found, turns)
    print(f"\nupstream chaos: {counts}; upstream did {dict(Counter(outcomes.values()))}")
    assert not wrong, f"{len(wrong)} clients saw something else than the upstream did: {list(wrong.items())[:3]}"
    assert all(t.completed == (outcomes[t.user] == "answered") for t in turns)
    assert Counter(outcomes.values()) == Counter(answered=counts["completed"], error=4, cut=6, abandoned=2)
    assert counts["lost"] == 0 and counts["unearned"] == 0 and counts["duplicated"] == 0, counts
    assert runtime.counters["turns.lost"] == 0 and runtime.worker.stats.dead_lettered == 0


# --- c. memproxy serve SIGKILLed mid-traffic, started again on its data directory --------------------


@dataclass(frozen=True)
class JobRow:
    status: str
    attempts: int
    subject: str | None  # the job's user while its payload is kept (until it is done)


def jobs_on_disk(data_dir) -> dict[str, JobRow]:
    """The job table of an embedded proxy's state store: turn id -> its job."""
    with contextlib.closing(sqlite3.connect(data_dir / "state.sqlite3")) as db:
        rows = db.execute("SELECT idempotency_key, status, attempts, payload FROM jobs").fetchall()
    return {
        key.split(":", 1)[1]: JobRow(status, attempts, json.loads(payload)["subject"] if payload else None)
        for key, status, attempts, payload in rows
    }


def wait_ready(url: str) -> None:
    wait_for(lambda: httpx.get(url + "/readyz/memory").status_code == 200, 60, "memory ready")


def test_proxy_killed_mid_traffic_processes_every_queued_job_once(
    emulator, emulator_server, tmp_path, memory_model_dir
) -> None:
    """Every turn whose client got the whole answer, and every job on disk at the kill, is learned once.

    A turn whose job was on disk when the kill cut its answer's last bytes is learned too (the upstream
    answered it in full; the proxy queues a turn before its client sees the end of the answer).
    """
    from proxy.bench.harness import child_server
    from proxy.bench.limits import exited

    port, key, data = _free_port(), "sk-chaos-kill-" + uuid.uuid4().hex[:8], tmp_path / "data"
    env = {
        "MEMPROXY_DATA_DIR": str(data),
        "MEMPROXY_UPSTREAM_URL": emulator_server.url + "/v1",
        "MEMPROXY_EMBED_MODEL_PATH": str(memory_model_dir),
        "MEMPROXY_LLM_API_KEY": "sk-operator-extraction",  # the restarted process needs no tenant's request
        "MEMPROXY_JOB_LEASE_SECONDS": "2",
        "MEMPROXY_WORKER_POLL_INTERVAL": "0.05",
        "MEMPROXY_LOG_LEVEL": "warning",
    }
    processed = 'memproxy_jobs_total{outcome="processed"}'
    # The extraction model (chat completions) is slow: jobs pile up behind the Responses traffic.
    emulator.fault(path="/v1/chat/completions", delay=0.3, times=0)
    responses_only = (("responses", False), ("responses", True))
    try:
        with child_server(["serve", "--port", str(port)], port, env=env) as first:
            wait_ready(first.url)
            traffic = Traffic(sdk_sender(first.url + "/v1", key), threads=4, prefix="kill", kinds=responses_only)
            traffic.start()
            try:
                traffic.wait_completed(16)
                wait_for(
                    lambda: (m := scrape(first.url))[processed] >= 2 and m["memproxy_queue_depth"] >= 6,
                    20,
                    "jobs done and jobs queued",
                )
                before = scrape(first.url)
                os.kill(first.pid, signal.SIGKILL)  # clients sending, extractions running
                traffic.stop.set()
                wait_for(lambda: exited(first.pid), 10, "the proxy gone")
            finally:
                turns = traffic.finish()
        at_kill = jobs_on_disk(data)
        with child_server(["serve", "--port", str(port)], port, env=env) as second:
            wait_ready(second.url)
            wait_for(lambda: scrape(second.url)["memproxy_queue_depth"] == 0, 60, "the queue drained")
            after = scrape(second.url)
            found = learned(second.url, key, turns)
        extractions = [r for r in emulator.requests("/v1/chat/completions") if "response_format" in r["body"]]
    finally:
        emulator.clear_faults()
    final = jobs_on_disk(data)
    counts = account(found, turns)
    queued = {job.subject for job in at_kill.values() if job.status != "done"}
    cut = [t for t in turns if not t.completed and t.user in queued]  # queued, then the kill cut the answer
    unearned = [t for t in turns if not t.completed and t.user not in queued and found[t.user]]
    bodies = [json.dumps(r["body"]) for r in extractions]
    calls = Counter(sum(t.text in body for body in bodies) for t in turns if found[t.user])
    print(
        f"\nproxy kill: {counts}; jobs on disk at the kill {len(at_kill)} "
        f"({dict(Counter(job.status for job in at_kill.values()))}), of answers the kill cut {len(cut)}; "
        f"processed before the kill {before[processed]:.0f}, after the restart {after[processed]:.0f}; "
        f"jobs at the end {dict(Counter(job.status for job in final.values()))}, "
        f"attempts {dict(Counter(job.attempts for job in final.values()))}, extraction calls per learned turn "
        f"{dict(calls)}"
    )
    assert len(queued) >= 4, "the kill must find jobs queued"
    assert counts["lost"] == 0, f"answered turns not learned: {counts}"
    assert all(found[t.user] == [t.text] for t in cut), "a job on disk at the kill is processed after the restart"
    assert not unearned, f"learned without an answer or a job: {[t.user for t in unearned]}"
    assert counts["duplicated"] == 0, "no memory twice"
    assert set(at_kill) <= set(final) and all(job.status == "done" for job in final.values()), "every job done"
    assert len(final) == counts["completed"] + len(cut), "one job per answered turn, none for another"
    # done twice only where the kill stopped an extraction halfway: at most one per worker loop
    assert sum(job.attempts > 1 for job in final.values()) <= 2 and set(calls) <= {1, 2}
