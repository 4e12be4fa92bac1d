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

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from conftest import _free_port, kill, redis_server

FAST = {"reconnect_backoff": 0.1, "reconnect_backoff_cap": 0.5, "worker_poll_interval": 0.05}
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
            route, stream = [("chat", False), ("responses", False), ("chat", True), ("responses", True)][(sent + n) % 4]
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
        proxy = make_proxy(
            redis_url=url,
            secret="chaos-secret",
            single_replica=True,
            redis_prefix="chaos-" + uuid.uuid4().hex[:8],
            worker_in_proxy=True,
            llm_api_key="sk-operator-extraction",
            job_lease_seconds=2.0,
            **FAST,
        )
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
                found = learned(proxy.url, key, turns)
                numbers = wait_for(
                    lambda: (m := scrape(proxy.url)).get("memproxy_queue_depth") == 0 and m, 30, "an empty queue"
                )
        finally:
            traffic.stop.set()
            emulator.clear_faults()
            proxy.stop()
    counts = account(found, turns)
    failed = [t.error for t in turns if not t.completed]
    print(
        f"\nredis chaos: {counts}; jobs queued at the kill {queued_at_kill:.0f}; sent before the kill {killed_at}, during the outage "
        f"{restarted_at - killed_at}, after {len(turns) - restarted_at}; spooled {runtime.counters['turns.spooled']}, "
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
