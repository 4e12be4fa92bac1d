"""``memproxy bench soak``: bounded mixed traffic with upstream faults, then what the proxy kept and leaked.

The emulator and ``memproxy serve`` run as child processes (the embedded default: SQLite state,
Qdrant Edge, the in-process worker, ``MEMPROXY_EXTRACTOR=verbatim`` so each turn's memory is its user
text), in a fresh data directory. ``concurrency`` closed-loop clients send for ``seconds`` (or until
``requests`` were sent): Chat and Responses, streamed and not, a share of them naming a user (memory
on; a new user per turn, so a user's memories are that one turn's) and the rest with ``X-Memory: off``.
Every request is planned from a seeded generator, so a run can be repeated:

- ``fault_rate`` of them carry an upstream fault in the emulator's ``x-emulator-fault`` header: a 5xx,
  a stream or body cut after 3 events or bytes, or a slow answer (0.3 s);
- ``abandon_rate`` of them are abandoned by their client: before the answer (the upstream waits 5 s,
  the client leaves after 0.2 s), or after the first event of a slowed stream.

Each answer is checked against what the upstream was told to do ("unexpected" counts any other). Once
the traffic stops, the queue is drained (as long as the worker makes progress: it may have fallen
behind) and every user is read back through the memory API: a turn
answered in full must be learned once, and no other turn may be learned. The proxy's RSS is sampled
from ``/proc/PID/status`` during the run, its open descriptors counted in ``/proc/PID/fd`` before and
after (idle upstream keep-alive connections are among them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from rich.console import Console
from rich.status import Status

from proxy.bench.harness import Child, child_server, free_port, print_notes, print_table, rss_mb

MODEL = "gpt-4o-mini"
KEY = "sk-soak"
FAULTS = ("5xx", "cut", "slow")
SLOW = 0.3
"""Seconds a slow answer waits upstream (answered: the client waits for it)."""
ABANDON_AFTER = 0.2
"""Seconds a client waits before it leaves a call the upstream holds for ``HELD`` seconds."""
HELD = 5.0
DRAIN_STALL = 30.0
"""Seconds the drain waits without progress (no job processed, nothing captured) before it gives up."""


@dataclass
class Planned:
    """One request, decided before it is sent."""

    index: int
    route: str  # chat | responses
    stream: bool
    user: str | None  # memory on when named
    text: str
    fault: str | None = None  # 5xx | cut | slow
    status: int | None = None  # the 5xx asked for
    abandon: str | None = None  # before | mid

    def header(self) -> str | None:
        """The ``x-emulator-fault`` header that makes the upstream do what is planned."""
        if self.abandon == "before":
            return f"delay={HELD}"
        if self.abandon == "mid":
            return "event_delay=0.2"
        return {"5xx": f"status={self.status}", "cut": "drop_after=3", "slow": f"delay={SLOW}"}.get(self.fault or "")


def plan(
    index: int, rng: random.Random, run: str, memory_share: float, fault_rate: float, abandon_rate: float
) -> Planned:
    route = "chat" if index % 2 == 0 else "responses"
    stream = rng.random() < 0.5
    user = f"soak-{run}-{index}" if rng.random() < memory_share else None
    text = f"My soak note {index} says {uuid.uuid4().hex[:8]}."
    planned = Planned(index, route, stream, user, text)
    draw = rng.random()
    if draw < abandon_rate:
        planned.abandon = "mid" if stream else "before"
    elif draw < abandon_rate + fault_rate:
        planned.fault = rng.choice(FAULTS)
        planned.status = rng.choice((500, 503)) if planned.fault == "5xx" else None
    return planned


@dataclass
class Seen:
    """What the client saw, classified: ok, upstream 5xx, upstream cut, abandoned, or unexpected ..."""

    planned: Planned
    outcome: str
    complete: bool = False


def _request(planned: Planned) -> tuple[str, dict[str, str], bytes]:
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    if planned.user is None:
        headers["x-memory"] = "off"
    fault = planned.header()
    if fault:
        headers["x-emulator-fault"] = fault
    if planned.route == "chat":
        path = "/v1/chat/completions"
        body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": planned.text}]}
        if planned.user:
            body["user"] = planned.user
    else:
        path, body = "/v1/responses", {"model": MODEL, "input": planned.text}
        if planned.user:
            body["safety_identifier"] = planned.user
    return path, headers, json.dumps({**body, "stream": planned.stream}).encode()


def _answered(planned: Planned, body: bytes) -> bool:
    """A whole answer: a stream that ended as the API ends it, or a JSON object with an id."""
    if planned.stream:
        events = [event for event in body.split(b"\n\n") if event.strip()]
        if not events:
            return False
        last = events[-1]
        return last == b"data: [DONE]" if planned.route == "chat" else last.startswith(b"event: response.completed")
    try:
        return bool(json.loads(body).get("id"))
    except ValueError:
        return False


def _is_error(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body).get("error"), dict)
    except (ValueError, AttributeError):
        return False


async def send(client: httpx2.AsyncClient, base: str, planned: Planned) -> Seen:
    path, headers, content = _request(planned)
    if planned.abandon == "before":
        try:
            await asyncio.wait_for(client.post(base + path, content=content, headers=headers), ABANDON_AFTER)
        except TimeoutError:
            return Seen(planned, "abandoned")
        return Seen(planned, "unexpected: answered before the upstream's delay")
    body, cut = b"", False
    async with client.stream("POST", base + path, content=content, headers=headers) as response:
        status = response.status_code
        try:
            async for chunk in response.aiter_raw():
                if planned.abandon == "mid":
                    return Seen(planned, "abandoned")  # leaving the block closes the connection
                body += chunk
        except httpx2.RemoteProtocolError:
            cut = True
    if planned.fault == "5xx":
        ok = status == planned.status and not cut and _is_error(body)
        return Seen(planned, "upstream 5xx" if ok else f"unexpected: {status}{' cut' if cut else ''}")
    if planned.fault == "cut":
        return Seen(planned, "upstream cut" if status == 200 and cut else f"unexpected: {status} not cut")
    if status == 200 and not cut and _answered(planned, body):
        return Seen(planned, "ok", complete=True)
    return Seen(planned, f"unexpected: {status}{' cut' if cut else ''}")


@dataclass
class Gauges:
    """The proxy process's RSS (sampled) and open file descriptors, from /proc."""

    pid: int
    rss: list[float] = field(default_factory=list)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def fds(self) -> tuple[int, int]:
        """Open file descriptors, and how many of them are sockets."""
        sockets = 0
        names = os.listdir(f"/proc/{self.pid}/fd")
        for name in names:
            with contextlib.suppress(OSError):
                sockets += os.readlink(f"/proc/{self.pid}/fd/{name}").startswith("socket:")
        return len(names), sockets

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.rss.append(self.rss_mb())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


@dataclass
class Result:
    seconds: float
    concurrency: int
    seen: list[Seen]
    learned: dict[str, list[str]]
    metrics: dict[str, float]
    rss: tuple[float, float, float]
    fds: tuple[tuple[int, int], tuple[int, int]]
    """(open, sockets) at the start and at the end."""
    drained: bool
    drain_seconds: float

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(seen.outcome for seen in self.seen)

    @property
    def unexpected(self) -> int:
        return sum(count for outcome, count in self.outcomes.items() if outcome.startswith("unexpected"))

    @property
    def turns_sent(self) -> list[Planned]:
        """Turns with memory on whose answer reached the client whole: each must be learned."""
        return [s.planned for s in self.seen if s.complete and s.planned.user]

    @property
    def lost(self) -> int:
        return sum(self.learned.get(p.user or "") != [p.text] for p in self.turns_sent)

    @property
    def unearned(self) -> int:
        """Turns learned although their answer did not reach the client whole."""
        return sum(bool(self.learned.get(s.planned.user or "")) for s in self.seen if s.planned.user and not s.complete)

    @property
    def duplicated(self) -> int:
        return sum(len(texts) > 1 for texts in self.learned.values())

    @property
    def dead_letters(self) -> int:
        return int(self.metrics.get("memproxy_dead_letters", 0))

    @property
    def passed(self) -> bool:
        return self.drained and not (
            self.lost or self.unearned or self.duplicated or self.unexpected or self.dead_letters
        )


def _scrape(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def _metrics(client: httpx2.AsyncClient, proxy: Child) -> dict[str, float]:
    return _scrape((await client.get(proxy.url + "/metrics")).text)


async def _wait_ready(client: httpx2.AsyncClient, proxy: Child, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(proxy.url + "/readyz/memory")).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy's memory was not ready within {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def _drain(client: httpx2.AsyncClient, proxy: Child, turns: int, status: Status) -> tuple[dict[str, float], bool]:
    """Wait until every answered turn was captured and the queue and the spool are empty.

    The worker may have fallen behind the traffic: the wait goes on as long as it makes progress, and
    gives up after ``DRAIN_STALL`` seconds without any.
    """
    progress, moved = None, time.monotonic()
    while True:
        found = await _metrics(client, proxy)
        done = (
            found.get("memproxy_turns_captured_total", 0) >= turns
            and found.get("memproxy_queue_depth") == 0
            and found.get("memproxy_spool_depth", 0) == 0
        )
        now = (found.get("memproxy_turns_captured_total"), found.get('memproxy_jobs_total{outcome="processed"}'))
        if now != progress:
            progress, moved = now, time.monotonic()
        captured, depth = found.get("memproxy_turns_captured_total", 0), found.get("memproxy_queue_depth", 0)
        status.update(f"draining: {captured:,.0f} of {turns:,} turns captured, {depth:,.0f} jobs queued")
        if done or time.monotonic() - moved > DRAIN_STALL:
            return found, done
        await asyncio.sleep(0.25)


async def _learned(client: httpx2.AsyncClient, proxy: Child, users: list[str]) -> dict[str, list[str]]:
    gate = asyncio.Semaphore(16)

    async def one(user: str) -> tuple[str, list[str]]:
        async with gate:
            answer = await client.get(
                f"{proxy.url}/memory/v1/users/{user}/memories", headers={"authorization": f"Bearer {KEY}"}
            )
            answer.raise_for_status()
            return user, [memory["text"] for memory in answer.json()["data"]]

    return dict(await asyncio.gather(*(one(user) for user in users)))


async def _tick(status: Status, started: float, seconds: float, seen: list[Seen], stop: asyncio.Event) -> None:
    """The live line while traffic runs (stderr, terminals only): time and answers so far."""
    while not stop.is_set():
        elapsed = time.monotonic() - started
        status.update(
            f"traffic: {elapsed:.0f} of {seconds:.0f} s, {len(seen):,} answers ({len(seen) / max(elapsed, 1e-3):.0f}/s)"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _soak(
    proxy: Child,
    seconds: float,
    requests: int,
    concurrency: int,
    memory_share: float,
    fault_rate: float,
    abandon_rate: float,
    seed: int,
) -> Result:
    gauges = Gauges(proxy.pid)
    status = Console(stderr=True).status("waiting for the proxy's memory")  # the live line (terminals only)
    status.start()
    try:
        async with httpx2.AsyncClient(timeout=60) as control:
            await _wait_ready(control, proxy)
            rss_start, fds_start = gauges.rss_mb(), gauges.fds()
            rng, run = random.Random(seed), uuid.uuid4().hex[:6]
            seen: list[Seen] = []
            issued = 0
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(gauges.sample(stop))
            limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            started = time.monotonic()
            traffic_over = asyncio.Event()
            ticker = asyncio.ensure_future(_tick(status, started, seconds, seen, traffic_over))
            async with httpx2.AsyncClient(limits=limits, timeout=30) as client:

                async def worker() -> None:
                    nonlocal issued
                    while time.monotonic() - started < seconds and (not requests or issued < requests):
                        planned = plan(issued, rng, run, memory_share, fault_rate, abandon_rate)
                        issued += 1
                        try:
                            seen.append(await send(client, proxy.url, planned))
                        except httpx2.HTTPError as exc:
                            seen.append(Seen(planned, f"unexpected: {type(exc).__name__}"))

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            turns = [s.planned for s in seen if s.complete and s.planned.user]
            ended = time.monotonic()
            traffic_over.set()
            await ticker
            metrics, drained = await _drain(control, proxy, len(turns), status)
            drain_seconds = time.monotonic() - ended
            stop.set()
            await sampler
            users = [s.planned.user for s in seen if s.planned.user]
            learned = await _learned(control, proxy, users)
        await asyncio.sleep(1.0)  # the proxy closes what the finished clients left
        rss_end, fds_end = gauges.rss_mb(), gauges.fds()
        peak = max([rss_start, rss_end, *gauges.rss])
        rss = (rss_start, peak, rss_end)
        return Result(elapsed, concurrency, seen, learned, metrics, rss, (fds_start, fds_end), drained, drain_seconds)
    finally:
        status.stop()


def _share(count: int, total: int) -> str:
    return f"{count / total * 100:.1f}%" if total else "-"


def report(result: Result) -> None:
    seen, total = result.seen, len(result.seen)
    outcomes = result.outcomes
    streamed, memory = sum(s.planned.stream for s in seen), sum(bool(s.planned.user) for s in seen)
    chat = sum(s.planned.route == "chat" for s in seen)
    mix = f"chat {chat:,}, responses {total - chat:,}; streamed {streamed:,}; memory on {memory:,}"
    slow = sum(1 for s in seen if s.planned.fault == "slow" and s.complete)
    processed = result.metrics.get('memproxy_jobs_total{outcome="processed"}', 0)
    rss, fds = result.rss, result.fds
    rows = [
        [
            "requests",
            f"{total:,}",
            f"{total / result.seconds:.0f}/s over {result.seconds:.1f} s, {result.concurrency} clients",
        ],
        [
            "  answered whole (ok)",
            f"{outcomes['ok']:,}",
            f"{_share(outcomes['ok'], total)}; {slow} of them slow upstream",
        ],
        ["  upstream 5xx, relayed as sent", f"{outcomes['upstream 5xx']:,}", _share(outcomes["upstream 5xx"], total)],
        ["  upstream cut, seen cut", f"{outcomes['upstream cut']:,}", _share(outcomes["upstream cut"], total)],
        ["  abandoned by the client", f"{outcomes['abandoned']:,}", _share(outcomes["abandoned"], total)],
        ["  unexpected", f"{result.unexpected:,}", _share(result.unexpected, total)],
        ["turns sent (memory on, answered whole)", f"{len(result.turns_sent):,}", ""],
        ["turns learned", f"{len(result.turns_sent) - result.lost:,}", "read back through the memory API"],
        ["lost turns", f"{result.lost:,}", "" if result.drained else "the queue had not drained"],
        ["turns learned without a whole answer", f"{result.unearned:,}", "5xx, cut or abandoned with memory on"],
        ["memories twice", f"{result.duplicated:,}", ""],
        [
            "jobs processed / dead-lettered / left",
            f"{processed:,.0f} / {result.dead_letters} / {result.metrics.get('memproxy_queue_depth', 0):,.0f}",
            f"drained {result.drain_seconds:.1f} s after the traffic",
        ],
        ["proxy RSS start / peak / end", f"{rss[0]:.0f} / {rss[1]:.0f} / {rss[2]:.0f} MB", "/proc/PID/status VmRSS"],
        [
            "proxy open fds start / end",
            f"{fds[0][0]} / {fds[1][0]}",
            f"/proc/PID/fd; sockets {fds[0][1]} / {fds[1][1]}",
        ],
    ]
    print_table("memproxy bench soak", ["measure", "value", "note"], rows, caption=f"requests: {mix}")
    notes = []
    if not result.drained:
        notes.append(
            f"the queue stopped draining ({DRAIN_STALL:.0f} s without progress): turns not learned yet count as lost"
        )
    for outcome, count in sorted(outcomes.items()):
        if outcome.startswith("unexpected"):
            notes.append(f"{count} x {outcome}")
    if notes:
        print_notes(notes)


def run(
    seconds: float = 60.0,
    requests: int = 0,
    concurrency: int = 16,
    memory_share: float = 0.5,
    fault_rate: float = 0.1,
    abandon_rate: float = 0.05,
    seed: int = 1,
    model_path: Path | None = None,
) -> Result:
    """Start the emulator and the proxy, soak, print the table; the result (``passed`` says if nothing was lost)."""
    emulator_port, proxy_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="memproxy-soak-") as scratch:
        data = Path(scratch)
        env = {
            "MEMPROXY_DATA_DIR": str(data / "data"),
            "MEMPROXY_EXTRACTOR": "verbatim",
            "MEMPROXY_WORKER_IN_PROXY": "true",
            "MEMPROXY_LOG_LEVEL": "warning",
        }
        if model_path is not None:
            env["MEMPROXY_EMBED_MODEL_PATH"] = str(model_path)
        emulator_args = ["emulator", "--port", str(emulator_port)]
        with child_server(emulator_args, emulator_port, log=data / "emulator.log") as emulator:
            args = ["serve", "--port", str(proxy_port), "--upstream", f"{emulator.url}/v1"]
            with child_server(args, proxy_port, env=env, log=data / "proxy.log") as proxy:
                result = asyncio.run(
                    _soak(proxy, seconds, requests, concurrency, memory_share, fault_rate, abandon_rate, seed)
                )
    report(result)
    return result
