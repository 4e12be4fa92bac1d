"""Pieces every benchmark shares: child servers, a closed-loop load generator, percentiles, tables.

Servers run as child processes, as they would in production, so the load generator in this
process does not share an interpreter lock with the code it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from proxy.server import stop_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU the child and its running children have used: what it costs, whatever else
        the machine runs (a server that forks workers counts them all)."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.pid))


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from each process's parent in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += parents.get(pid, [])
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """The memory figures of process ``pid`` now, in MB, by their name in /proc/PID/status (VmRSS = RssAnon
    + RssFile + RssShmem: heap, memory-mapped files, shared memory; VmHWM: the highest VmRSS so far)."""
    found = {}
    with Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                found[name] = int(value.split()[0]) / 1024
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now (VmRSS in /proc/PID/status), in MB."""
    return memory_mb(pid).get("VmRSS", 0.0)


@contextlib.contextmanager
def child_server(
    args: list[str],
    port: int,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    *,
    command: list[str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> Iterator[Child]:
    """Run ``python -m proxy <args>`` (or ``command + args``) and yield it once its port accepts connections.

    Its stderr goes to a file (``log`` when given, else a temporary one, read if it fails to start),
    never to a pipe: a child that logs much (a soak's faults, recall deadlines under load) would block
    on a full pipe nobody reads while it runs.
    """
    temporary = log is None
    if log is None:
        with tempfile.NamedTemporaryFile(prefix="memproxy-child-", suffix=".log", delete=False) as made:
            log = Path(made.name)
    sink = open(log, "wb")  # noqa: SIM115 - closed below, after the child
    process = subprocess.Popen(
        [*(command or [sys.executable, "-m", "proxy"]), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=sink,
        cwd=cwd,
    )
    try:
        _wait_until_listening(port, process, log, timeout)
        yield Child(f"http://127.0.0.1:{port}", process.pid)
    finally:
        stop_process(process)
        sink.close()
        if temporary:
            log.unlink(missing_ok=True)


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = log.read_text(errors="replace")
            raise RuntimeError(f"server exited with {process.returncode}: {stderr[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


@dataclass
class Sample:
    total: float
    first_event: float | None = None


Call = Callable[[httpx2.AsyncClient], Awaitable[Sample]]


WARMUP = 50


async def drive(call: Call, requests: int, concurrency: int, warmup: int = WARMUP) -> tuple[list[Sample], float]:
    """Closed loop: ``concurrency`` workers issue ``requests`` calls in all; returns samples, wall time."""
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(warmup):
            await call(client)
        remaining = requests
        samples: list[Sample] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                samples.append(await call(client))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


#: Fewest samples a percentile is printed for; below this the cell shows "-" (it would be noise).
MIN_SAMPLES = {50: 1, 95: 20, 99: 100}


def ms_percentile(values: list[float], q: int) -> str:
    """``ms(percentile(values, q))``, or "-" when there are too few samples for that percentile."""
    if len(values) < MIN_SAMPLES.get(q, 1):
        return "-"
    return ms(percentile(values, q))


def pct(share: float) -> str:
    """A share in [0, 1] as a percentage with one decimal ("-" for NaN)."""
    return "-" if math.isnan(share) else f"{share * 100:.1f}"


def print_table(title: str, columns: list[str], rows: list[list[str]], caption: str | None = None) -> None:
    table = Table(title=title, caption=caption, caption_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def progress_bar() -> Progress:
    """A progress bar on stderr for a benchmark's long stage (what it does, done / total, time left)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def print_notes(lines: list[str]) -> None:
    """Plain notes under a table: what was measured and how to read it."""
    console = Console(width=160, highlight=False)
    for line in lines:
        console.print(f"- {line}", markup=False)
