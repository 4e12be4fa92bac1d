"""Load generators for ``memproxy bench overhead``: wrk when installed, else a lean asyncio client.

A :class:`Plan` says what one call is: a fixed body (pure forwarding), a body made anew for each
call from a template (a different question every time, so no cache along the way can answer), or
one path per call from a list (a fresh thread per run creation). :func:`run_wrk` turns the plan
into a Lua script and reads wrk's own latency histogram; :func:`run_python` sends the same calls
over raw keep-alive HTTP/1.1 connections (no client library in the way) and also measures the
time to the first event of a stream, which wrk cannot see.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from proxy.bench.harness import Child, percentile

WRK_MARK = "WRK-RESULT "


@dataclass
class Server:
    """A server under test: the emulator itself (``direct``), memproxy, or LiteLLM's proxy."""

    name: str
    child: Child
    headers: dict[str, str]
    """The headers of every call (LiteLLM wants its own key)."""


@dataclass
class Plan:
    """One kind of call: ``template % (asks[i], i, users[i])`` makes call i's body when a template is set."""

    path: str
    headers: dict[str, str]
    body: bytes = b""
    template: str = ""
    asks: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    """One path per call, each used once (the run stops when they are used up); else ``path`` always."""
    method: str = "POST"
    stream: bool = False
    """The answer is an event stream: its first event's time is worth measuring."""

    def body_of(self, index: int) -> bytes:
        if not self.template:
            return self.body
        ask, user = self.asks[index % len(self.asks)], self.users[index % len(self.users)]
        return (self.template % (json.dumps(ask)[1:-1], index, user)).encode()

    def path_of(self, index: int) -> str | None:
        if not self.paths:
            return self.path
        return self.paths[index] if index < len(self.paths) else None


@dataclass
class Result:
    """What one run measured: latency percentiles and time to first event in seconds."""

    requests: int
    seconds: float
    p50: float
    p95: float
    p99: float
    errors: int = 0
    first_event_p50: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    level = "=" * 4
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def lua_script(plan: Plan) -> str:
    """The wrk script for ``plan``: headers, the body (or its template and data), and a result line."""
    lines = [f"wrk.method = {_lua_string(plan.method)}"]
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in plan.headers.items()]
    if plan.template:
        asks = ",\n".join(_lua_string(json.dumps(ask)[1:-1]) for ask in plan.asks)
        users = ",\n".join(_lua_string(user) for user in plan.users)
        lines += [
            f"local asks = {{{asks}}}",
            f"local users = {{{users}}}",
            f"local template = {_lua_string(plan.template)}",
            "local threads = 0",
            "function setup(thread) thread:set('tid', threads); threads = threads + 1 end",
            "local counter = 0",
            "function request()",
            "  counter = counter + 1",
            "  local n = counter * 64 + tid",  # unique across up to 64 threads
            "  local body = string.format(template, asks[n % #asks + 1], n, users[n % #users + 1])",
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    else:
        lines.append(f"wrk.body = {_lua_string(plan.body.decode())}")
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        "  io.write(string.format('" + WRK_MARK + '{"requests": %d, "us": %d, "errors": %d, '
        '"p50": %d, "p95": %d, "p99": %d}\\n\', summary.requests, summary.duration, '
        "e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(95), "
        "latency:percentile(99)))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def run_wrk(base: str, plan: Plan, concurrency: int, seconds: float) -> Result:
    """``plan`` for ``seconds`` at ``concurrency`` connections under wrk (one thread per core at most)."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(plan))
    try:
        threads = min(concurrency, 2)
        args = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script.name]
        completed = subprocess.run(
            [*args, "--timeout", "30s", base + plan.path], capture_output=True, text=True, check=False
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    for line in completed.stdout.splitlines():
        if line.startswith(WRK_MARK):
            data = json.loads(line.removeprefix(WRK_MARK))
            micro = 1e-6
            return Result(
                requests=data["requests"],
                seconds=data["us"] * micro,
                p50=data["p50"] * micro,
                p95=data["p95"] * micro,
                p99=data["p99"] * micro,
                errors=data["errors"],
            )
    raise RuntimeError(f"wrk gave no result: {completed.stdout[-500:]} {completed.stderr[-500:]}")


# --- the Python generator: raw HTTP/1.1 over asyncio streams -------------------------------------


def _request_bytes(host: str, plan: Plan, path: str, body: bytes) -> bytes:
    head = [f"{plan.method} {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in plan.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, started: float) -> tuple[int, float | None]:
    """Read one response; its status and when its first SSE event arrived (None for a plain body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    first: float | None = None
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if first is None and b"data:" in chunk:
                first = time.perf_counter() - started
            if size == 0:
                return status, first
    marker = lower.find(b"content-length:")
    if marker >= 0:
        length = int(lower[marker + 15 : lower.index(b"\r\n", marker)])
        body = await reader.readexactly(length)
        if b"data:" in body[:64]:
            first = time.perf_counter() - started
    return status, first


async def _drive(base: str, plan: Plan, concurrency: int, seconds: float) -> Result:
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    totals: list[float] = []
    firsts: list[float] = []
    errors = 0
    counter = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal counter, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                index, counter = counter, counter + 1
                path = plan.path_of(index)
                if path is None:
                    return
                request = _request_bytes(f"{host}:{port}", plan, path, plan.body_of(index))
                started = time.perf_counter()
                writer.write(request)
                status, first = await _read_response(reader, started)
                totals.append(time.perf_counter() - started)
                if first is not None:
                    firsts.append(first)
                if status >= 400:
                    errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return Result(
        requests=len(totals),
        seconds=elapsed,
        p50=percentile(totals, 50),
        p95=percentile(totals, 95),
        p99=percentile(totals, 99),
        errors=errors,
        first_event_p50=percentile(firsts, 50) if firsts else None,
    )


def run_python(base: str, plan: Plan, concurrency: int, seconds: float) -> Result:
    """``plan`` for ``seconds`` (or until its paths are used up) at ``concurrency`` connections."""
    return asyncio.run(_drive(base, plan, concurrency, seconds))


Runner = Callable[[str, Plan, int, float], Result]


def runner(load: str) -> Runner:
    """``wrk``, ``python``, or ``auto`` (wrk when installed)."""
    if load == "wrk" or (load == "auto" and wrk_path() is not None):
        return run_wrk
    return run_python


Rows = Callable[..., list[list[str]]]
"""``rows(label, concurrency, servers, plan_of_server, runner=...)``: a table's rows for one scenario."""
