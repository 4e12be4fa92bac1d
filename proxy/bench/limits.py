"""Abusive clients against a running proxy, to measure its client limits (README, "Limits").

    python -m proxy.bench.limits slowloris --url http://127.0.0.1:8080 --connections 200
    python -m proxy.bench.limits headers --url http://127.0.0.1:8080 --pid PID --size-mb 64 --clients 8
    python -m proxy.bench.limits abandon --url http://127.0.0.1:8080 --pid PID --upstream-port 8090

``slowloris`` opens connections that send a request line and then one header line every few
seconds (``--body``: whole headers, then half the announced body and silence), and reports when the
proxy closed each one and what it answered. ``headers`` sends requests with one huge header and
reports the answers and the proxy's peak RSS (``/proc/PID/status``). ``abandon`` starts calls the
upstream answers only after ``--delay`` seconds (the emulator's ``x-emulator-fault`` header), drops
them after ``--abandon-after`` seconds, and counts the proxy's TCP connections to the upstream port
(``/proc/net/tcp``); with ``--sigterm`` it then starts as many calls whose clients wait, stops the
proxy while they do, and times its exit.
Raw sockets throughout: an HTTP client library would refuse to misbehave like this.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.bench.harness import rss_mb


@dataclass
class Outcome:
    closed_after: float | None = None  # seconds from connecting to the proxy closing the connection
    answer: str = ""  # the status line the proxy sent, if any
    error: str = ""


@dataclass
class Rss:
    """Samples VmRSS of a process every few milliseconds; ``peak_mb`` is the highest seen."""

    pid: int
    samples: list[float] = field(default_factory=list)

    def read(self) -> float:
        return rss_mb(self.pid)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append(self.read())
            await asyncio.sleep(0.02)

    @property
    def peak_mb(self) -> float:
        return max(self.samples, default=0.0)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def _read_answer(reader: asyncio.StreamReader, outcome: Outcome, started: float) -> None:
    """Read until the proxy closes the connection; keep its status line."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except OSError as exc:
        outcome.error = type(exc).__name__
    outcome.closed_after = time.monotonic() - started
    outcome.answer = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "(closed, no answer)"


async def _slow_client(host: str, port: int, index: int, interval: float, body: bool, duration: float) -> Outcome:
    outcome = Outcome()
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return Outcome(error=type(exc).__name__)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" % host.encode()
    if body:  # headers complete, then half of the announced body and silence
        head += b"Content-Length: 1000\r\n\r\n" + b"{" * 500
    writer.write(head)
    reading = asyncio.ensure_future(_read_answer(reader, outcome, started))
    try:
        while not reading.done() and time.monotonic() - started < duration:
            await asyncio.wait({reading}, timeout=interval)
            if not reading.done() and not body:
                writer.write(b"X-Slow-%d: %d\r\n" % (index, int(time.monotonic())))
                try:
                    await writer.drain()
                except OSError:
                    pass
    finally:
        if not reading.done():
            reading.cancel()
        writer.close()
    return outcome


def _summary(outcomes: list[Outcome], duration: float) -> None:
    closed = [o.closed_after for o in outcomes if o.closed_after is not None]
    answers: dict[str, int] = {}
    for o in outcomes:
        key = o.answer or o.error or "(still open)"
        answers[key] = answers.get(key, 0) + 1
    print(f"connections: {len(outcomes)}; closed by the proxy within {duration:.0f} s: {len(closed)}")
    if closed:
        print(
            f"closed after: min {min(closed):.1f} s, median {statistics.median(closed):.1f} s, max {max(closed):.1f} s"
        )
    for answer, count in sorted(answers.items(), key=lambda item: -item[1]):
        print(f"  {count:4d} x {answer}")


async def slowloris(url: str, connections: int, interval: float, duration: float, body: bool, pid: int | None) -> None:
    host, port = _address(url)
    rss = Rss(pid) if pid else None
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(rss.run(stop)) if rss else None
    clients = [_slow_client(host, port, i, interval, body, duration) for i in range(connections)]
    # Meanwhile, a well-behaved client: is the proxy still serving?
    probe_times: list[float] = []

    async def probe() -> None:
        await asyncio.sleep(1)
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await reader.read()
        probe_times.append(time.monotonic() - started)
        writer.close()

    outcomes, _ = await asyncio.gather(asyncio.gather(*clients), probe())
    stop.set()
    if sampler:
        await sampler
    _summary(list(outcomes), duration)
    print(f"a /healthz during the attack took {probe_times[0] * 1000:.1f} ms")
    if rss:
        print(f"proxy RSS peak during the run: {rss.peak_mb:.0f} MB")


async def _big_header_client(host: str, port: int, size: int, duration: float) -> Outcome:
    outcome = Outcome()
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    reading = asyncio.ensure_future(_read_answer(reader, outcome, started))
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer sk-bench\r\nX-Big: " % host.encode())
    chunk = b"a" * 65536
    sent = 0
    try:
        while sent < size and not reading.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        if not reading.done():
            writer.write(b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
    except OSError as exc:
        outcome.error = f"{type(exc).__name__} after {sent // 1024} KiB sent"
    try:
        await asyncio.wait_for(asyncio.shield(reading), timeout=duration)
    except TimeoutError:
        reading.cancel()
    writer.close()
    if outcome.error and not outcome.answer:
        outcome.answer = outcome.error
    return outcome


async def big_headers(url: str, size_mb: float, clients: int, pid: int | None, duration: float) -> None:
    host, port = _address(url)
    rss = Rss(pid) if pid else None
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(rss.run(stop)) if rss else None
    baseline = rss.read() if rss else 0.0
    started = time.monotonic()
    size = int(size_mb * 1024 * 1024)
    outcomes = await asyncio.gather(*(_big_header_client(host, port, size, duration) for _ in range(clients)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    stop.set()
    if sampler:
        await sampler
    print(f"{clients} client(s), one {size_mb:g} MB header each, {elapsed:.1f} s")
    _summary(list(outcomes), duration)
    if rss:
        print(f"proxy RSS: {baseline:.0f} MB before, peak {rss.peak_mb:.0f} MB, {rss.read():.0f} MB after")


def _upstream_connections(port: int) -> int:
    """Established TCP connections whose remote end is ``port`` (the proxy's side of each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                        count += 1
        except FileNotFoundError:
            continue
    return count


async def _send_chat(writer: asyncio.StreamWriter, host: str, delay: float, stream: bool) -> None:
    """One chat completion, written raw; the emulator answers it ``delay`` seconds late."""
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]%s}' % (
        b', "stream": true' if stream else b""
    )
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer sk-bench\r\n"
        b"Content-Type: application/json\r\nX-Memory: off\r\nx-emulator-fault: delay=%g\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), delay, len(body), body)
    )
    await writer.drain()


async def _abandoned_call(host: str, port: int, delay: float, after: float, stream: bool) -> None:
    _, writer = await asyncio.open_connection(host, port)
    await _send_chat(writer, host, delay, stream)
    await asyncio.sleep(after)
    writer.transport.abort()  # the client gives up: RST, no goodbye


def exited(pid: int) -> bool:
    """Whether process ``pid`` is gone (a zombie, a child of ours not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except (ProcessLookupError, FileNotFoundError):
        return True


async def abandon(
    url: str, calls: int, delay: float, after: float, upstream_port: int, pid: int | None, sigterm: bool, stream: bool
) -> None:
    host, port = _address(url)
    before = _upstream_connections(upstream_port)
    await asyncio.gather(*(_abandoned_call(host, port, delay, after, stream) for _ in range(calls)))
    gave_up = time.monotonic()
    print(f"{calls} calls (upstream answers after {delay:g} s) abandoned after {after:g} s")
    print(f"proxy->upstream connections: {before} before")
    for wait in (0.0, 0.5, 2.0, 5.0):
        await asyncio.sleep(max(0.0, gave_up + wait - time.monotonic()))
        print(f"  {wait:4.1f} s after the clients left: {_upstream_connections(upstream_port)}")
    if sigterm and pid:
        # Now calls whose clients wait on: SIGTERM lets them run until the shutdown deadline.
        started = time.monotonic()
        waiting = [asyncio.ensure_future(_live_call(host, port, delay, stream, started)) for _ in range(calls)]
        await asyncio.sleep(after)
        stopped = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while not exited(pid) and time.monotonic() - stopped < 600:
            await asyncio.sleep(0.05)
        print(f"SIGTERM with {calls} calls waiting on the upstream: exited after {time.monotonic() - stopped:.1f} s")
        outcomes = await asyncio.gather(*waiting)
        _summary(list(outcomes), time.monotonic() - started)


async def _live_call(host: str, port: int, delay: float, stream: bool, started: float) -> Outcome:
    outcome = Outcome()
    reader, writer = await asyncio.open_connection(host, port)
    await _send_chat(writer, host, delay, stream)
    await _read_answer(reader, outcome, started)
    writer.close()
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    slow = sub.add_parser("slowloris", help="connections that never finish their request")
    slow.add_argument("--url", default="http://127.0.0.1:8080")
    slow.add_argument("--connections", type=int, default=200)
    slow.add_argument("--interval", type=float, default=5.0, help="seconds between two header lines")
    slow.add_argument("--duration", type=float, default=150.0, help="seconds before giving up on the proxy")
    slow.add_argument("--body", action="store_true", help="send whole headers, then half the body, then nothing")
    slow.add_argument("--pid", type=int)
    big = sub.add_parser("headers", help="requests with one huge header")
    big.add_argument("--url", default="http://127.0.0.1:8080")
    big.add_argument("--size-mb", type=float, default=16.0)
    big.add_argument("--clients", type=int, default=1)
    big.add_argument("--duration", type=float, default=120.0)
    big.add_argument("--pid", type=int)
    gone = sub.add_parser("abandon", help="calls their clients give up on before the upstream answers")
    gone.add_argument("--url", default="http://127.0.0.1:8080")
    gone.add_argument("--calls", type=int, default=40)
    gone.add_argument("--delay", type=float, default=140.0)
    gone.add_argument("--abandon-after", type=float, default=1.0)
    gone.add_argument("--upstream-port", type=int, required=True)
    gone.add_argument("--pid", type=int)
    gone.add_argument("--sigterm", action="store_true")
    gone.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    if args.scenario == "slowloris":
        asyncio.run(slowloris(args.url, args.connections, args.interval, args.duration, args.body, args.pid))
    elif args.scenario == "headers":
        asyncio.run(big_headers(args.url, args.size_mb, args.clients, args.pid, args.duration))
    else:
        asyncio.run(
            abandon(
                args.url,
                args.calls,
                args.delay,
                args.abandon_after,
                args.upstream_port,
                args.pid,
                args.sigterm,
                args.stream,
            )
        )


if __name__ == "__main__":
    main()
