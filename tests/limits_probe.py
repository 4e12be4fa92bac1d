"""What one huge chat message costs a real proxy process, and whether another tenant notices.

Starts the emulator and ``memproxy serve`` (``python -m proxy``) as their own processes, teaches two
tenants' users a fact each, then sends tenant A's user one large message while tenant B's user keeps
asking questions that recall its fact. Reads the proxy's ``VmRSS`` and ``VmHWM`` (peak) from
``/proc/PID/status`` before and after, and times B's requests before and during A's.

    python tests/limits_probe.py                      # this checkout, 10 MB and 3.5 MB messages
    python tests/limits_probe.py --tree ../main --mb 10
    MEMPROXY_EMBED_MODEL_PATH=... when the model is not in ../shared/models/

``tests/test_limits.py`` runs it and checks the bounds the README states.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TREE = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("MEMPROXY_EMBED_MODEL_PATH") or TREE.parent / "shared/models/all-MiniLM-L6-v2-onnx")
SENTENCE = "The quarterly report covers logistics, staffing and the budget for the new warehouse. "
A, B = ("sk-probe-tenant-a", "alice"), ("sk-probe-tenant-b", "bob")
_QUESTIONS = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (resident now) and ``VmHWM`` (resident at its peak) of ``pid``, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


@contextlib.contextmanager
def running(tree: Path, data_dir: Path) -> Iterator[tuple[str, int]]:
    """Emulator and proxy processes from ``tree``; yields the proxy's URL and pid."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    emulator_port, proxy_port = free_port(), free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "proxy", "emulator", "--port", str(emulator_port)],
        cwd=tree,  # ``-m`` puts the working directory first on the path
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy_env = {
        **env,
        "MEMPROXY_UPSTREAM_URL": f"http://127.0.0.1:{emulator_port}/v1",
        "MEMPROXY_PORT": str(proxy_port),
        "MEMPROXY_DATA_DIR": str(data_dir),
        "MEMPROXY_EMBED_MODEL_PATH": str(MODEL),
        "MEMPROXY_LOG_LEVEL": "warning",
    }
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve"],
        cwd=tree,
        env=proxy_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                memory = httpx.get(url + "/readyz/memory", timeout=2).status_code  # 404 on trees before it
                if memory == 200 or (memory == 404 and httpx.get(url + "/readyz", timeout=2).status_code == 200):
                    break
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise RuntimeError("the proxy did not become ready")
            time.sleep(0.2)
        yield url, proxy.pid
    finally:
        for process in (proxy, emulator):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def chat(client: httpx.Client, url: str, who: tuple[str, str], content: str) -> httpx.Response:
    key, user = who
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    headers = {"authorization": f"Bearer {key}", "x-memory-user": user}
    return client.post(url + "/v1/chat/completions", json=body, headers=headers)


@dataclass
class Round:
    """One large message: its cost in the proxy and what tenant B saw meanwhile."""

    size_mb: float
    seconds: float = 0.0
    status: int = 0
    memory: str = ""
    rss_before: float = 0.0
    peak_after: float = 0.0
    rss_after: float = 0.0
    during_ms: list[float] = field(default_factory=list)
    during_statuses: list[str] = field(default_factory=list)

    @property
    def extra_mb(self) -> float:
        """Peak resident memory while the message was handled, over what was resident before it."""
        return self.peak_after - self.rss_before


@dataclass
class Report:
    baseline_ms: list[float]
    rounds: list[Round]


def measure(tree: Path = TREE, sizes_mb: tuple[float, ...] = (10.0, 3.5), baseline: int = 30) -> Report:
    with (
        tempfile.TemporaryDirectory() as data_dir,
        running(tree, Path(data_dir)) as (url, pid),
        httpx.Client(timeout=300) as client,
    ):
        facts = (
            (A, "Alice writes the quarterly warehouse budget report"),
            (B, "Bob runs Kubernetes in production"),
        )
        for (key, user), fact in facts:
            remembered = client.post(
                f"{url}/memory/v1/users/{user}/memories",
                json={"text": fact},
                headers={"authorization": f"Bearer {key}"},
            )
            assert remembered.status_code == 201, remembered.text
        for _ in range(5):  # warm: tokenizers, model, store, the paths of a large body
            chat(client, url, A, "Who writes the warehouse budget report?")
            chat(client, url, B, "What do we run in production?")
        chat(client, url, A, SENTENCE * (1024 * 1024 // len(SENTENCE)))
        time.sleep(1.0)
        baseline_ms = [timed_question(client, url)[0] for _ in range(baseline)]
        rounds = [one_round(client, url, pid, size) for size in sizes_mb]
    return Report(baseline_ms, rounds)


def timed_question(client: httpx.Client, url: str) -> tuple[float, str]:
    """Tenant B's recall, timed: the memory API's ``recall`` runs what a hooked request runs before it
    goes upstream (embedding, hybrid search, scoring), and nothing of the upstream's own time."""
    key, user = B
    question = f"What do we run in production? (question {next(_QUESTIONS)})"  # never a cached embedding
    began = time.perf_counter()
    response = client.post(
        f"{url}/memory/v1/users/{user}/recall",
        json={"query": question},
        headers={"authorization": f"Bearer {key}"},
    )
    found = response.status_code == 200 and len(response.json()["data"]) == 1
    return (time.perf_counter() - began) * 1000, "found" if found else f"HTTP {response.status_code}"


def one_round(client: httpx.Client, url: str, pid: int, size_mb: float) -> Round:
    result = Round(size_mb)
    message = SENTENCE * int(size_mb * 1024 * 1024 / len(SENTENCE))
    with contextlib.suppress(OSError):  # reset the peak (VmHWM) to the resident size now
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    result.rss_before = status_mb(pid)["VmRSS"]

    def send() -> None:
        began = time.perf_counter()
        with httpx.Client(timeout=300) as own:
            response = chat(own, url, A, message)
        result.seconds = time.perf_counter() - began
        result.status = response.status_code
        result.memory = response.headers.get("x-memory-status", "?") + " " + response.headers.get("x-memory-reason", "")

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive():  # tenant B keeps asking while A's message is in flight
        ms, memory = timed_question(client, url)
        result.during_ms.append(ms)
        result.during_statuses.append(memory)
    sender.join()
    time.sleep(1.0)  # the in-process worker's share (a queued turn) counts too
    after = status_mb(pid)
    result.peak_after, result.rss_after = after["VmHWM"], after["VmRSS"]
    return result


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if len(values) > 1 else values[0]


def spread(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.1f} ms, p95 {percentile(values, 95):.1f} ms, max {max(values):.1f} ms"


def describe(report: Report) -> str:
    lines = [f"tenant B's recall alone: {spread(report.baseline_ms)} ({len(report.baseline_ms)} calls)"]
    for r in report.rounds:
        statuses = {s: r.during_statuses.count(s) for s in sorted(set(r.during_statuses))}
        lines.append(
            f"{r.size_mb:g} MB message from tenant A: HTTP {r.status}, x-memory {r.memory.strip()}, {r.seconds:.2f} s; "
            f"proxy RSS {r.rss_before:.0f} MB before, peak {r.peak_after:.0f} MB (+{r.extra_mb:.0f} MB), "
            f"{r.rss_after:.0f} MB after; tenant B meanwhile: {len(r.during_ms)} recalls, "
            f"{spread(r.during_ms or [float('nan')])}, {statuses}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=TREE, help="checkout whose proxy to run")
    parser.add_argument("--mb", type=float, action="append", help="message sizes in MB (repeatable)")
    args = parser.parse_args()
    print(describe(measure(args.tree.resolve(), tuple(args.mb or (10.0, 3.5)))))


if __name__ == "__main__":
    main()
