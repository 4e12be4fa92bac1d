"""``memproxy bench recall-load``: recall + injection through a running proxy, under wrk.

A data directory is filled as ``bench overhead`` fills it (:func:`proxy.bench.injection.fill`: one
tenant, 1,000 users), a proxy serves it in front of the emulator, and wrk sends chat completions,
each with a different question and user (a Lua script numbers them), so every call embeds its
question and recalls. The same load straight to the emulator is the baseline. Reported: requests/s,
wrk's latency percentiles, and the CPU the proxy and the emulator used per request (what the figure
would be on an idle machine: two cores give 2,000 ms of CPU per second).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx2

from proxy.bench.harness import Child, child_server, free_port, print_notes, print_table, rss_mb
from proxy.bench.injection import _wait_ready, fill
from proxy.bench.membench import bench_settings
from proxy.bench.recall.data import SECRET, TENANT

#: A different question and user on every request: the query cache never answers, every call recalls.
SCRIPT = r"""
local counter = 0
local topics = {"my job", "my family", "my diet", "my travel plans", "my hobbies", "my car", "my health",
                "my pets", "my home", "my languages"}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
request = function()
  counter = counter + 1
  local user = string.format("user-%05d", counter % 1000)
  local q = string.format("Question %d from %s: what do you remember about %s, item %d?",
                          counter, user, topics[(counter % 10) + 1], counter * 7)
  local body = string.format('{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},'
                             .. '{"role":"user","content":"%s"}],"user":"%s"}', q, user)
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Wrk:
    requests: int
    seconds: float
    errors: int
    latency_ms: dict[int, float]  # percentile -> ms

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")


def parse_wrk(output: str) -> Wrk:
    """Requests, duration, non-2xx and socket errors, and the --latency percentiles of wrk's report."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", output)
    if done is None:
        raise RuntimeError(f"wrk printed no summary: {output[-500:]}")
    seconds = float(done.group(2)) * _UNITS[done.group(3)] / 1000
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    latency = {
        int(p): float(v) * _UNITS[u]
        for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE)
    }
    return Wrk(int(done.group(1)), seconds, errors, latency)


def run_wrk(url: str, script: Path, concurrency: int, seconds: float) -> Wrk:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    return parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def measured(child: Child, url: str, script: Path, concurrency: int, seconds: float) -> tuple[Wrk, float]:
    """wrk's figures, and ``child``'s CPU ms per request over the run."""
    before = child.cpu_seconds()
    result = run_wrk(url, script, concurrency, seconds)
    return result, (child.cpu_seconds() - before) * 1000 / max(result.requests, 1)


def counters(url: str) -> dict[str, float]:
    """The proxy's requests by memory outcome (``status:ok``...) and degraded requests by cause (``cause:...``)."""
    text = httpx2.get(url + "/metrics", timeout=60).text  # the proxy may still be finishing cut-off calls
    out: dict[str, float] = {}
    for metric, label in (("memproxy_memory_requests_total", "status"), ("memproxy_degraded_total", "cause")):
        pattern = rf'^{metric}\{{[^}}]*{label}="([^"]+)"[^}}]*\}} ([\d.e+]+)$'
        for name, value in re.findall(pattern, text, re.MULTILINE):
            out[f"{label}:{name}"] = out.get(f"{label}:{name}", 0.0) + float(value)
    return out


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def run(memories: int, concurrency: int, seconds: float) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="memproxy-recall-load-"))
    settings = bench_settings(work)
    if settings.embed_model_path is None:
        raise SystemExit("set MEMPROXY_EMBED_MODEL_PATH to the local embedding model directory")
    summary = asyncio.run(fill(settings.data_dir, settings, memories))
    script = work / "unique.lua"
    script.write_text(SCRIPT)
    env = {
        "MEMPROXY_DATA_DIR": str(settings.data_dir),
        "MEMPROXY_TENANT": TENANT,
        "MEMPROXY_SECRET": SECRET.decode(),
        "MEMPROXY_LOG_LEVEL": "warning",
        "MEMPROXY_WORKER_IN_PROXY": "false",  # recall only: no extraction behind the answers
        "MEMPROXY_ASSISTANTS": "passthrough",
        "MEMPROXY_EMBED_CACHE_SIZE": "0",
    }
    emulator_port, proxy_port = free_port(), free_port()
    rows = []
    emulator_args = ["emulator", "--port", str(emulator_port)]
    with child_server(emulator_args, emulator_port, log=work / "emulator.log") as emulator:
        args = ["serve", "--port", str(proxy_port), "--upstream", f"{emulator.url}/v1"]
        # a recall that fails open logs a line: to a file, never to a pipe nobody reads while wrk runs
        with child_server(args, proxy_port, env=env, log=work / "proxy.log") as proxy:
            _wait_ready(proxy.url)
            rss_ready = rss_mb(proxy.pid)
            run_wrk(proxy.url, script, concurrency, 3)  # warm-up: first calls, connection pool
            direct, emulator_cpu = measured(emulator, emulator.url, script, concurrency, seconds)
            before = counters(proxy.url)
            proxied, proxy_cpu = measured(proxy, proxy.url, script, concurrency, seconds)
            outcomes = difference(counters(proxy.url), before)
            emulator_behind = emulator_cpu  # what the emulator costs per request, proxied or not
            rss_end = rss_mb(proxy.pid)
    recalled = outcomes.get("status:ok", 0.0) + outcomes.get("status:none", 0.0)
    for name, result, cpu, answered in (
        ("emulator direct", direct, emulator_cpu, "-"),
        ("memproxy + recall", proxied, proxy_cpu, f"{recalled / seconds:,.0f}"),
    ):
        rows.append(
            [
                name,
                str(concurrency),
                f"{result.requests:,}",
                f"{result.rate:,.0f}",
                answered,
                *(f"{result.latency_ms.get(p, float('nan')):.2f}" for p in (50, 90, 99)),
                f"{cpu:.2f}",
                str(result.errors),
            ]
        )
    print_table(
        f"memproxy bench recall-load: chat completions + recall through the proxy, wrk ({summary})",
        [
            "target",
            "concurrency",
            "requests",
            "requests/s",
            "recalled/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "CPU ms/req",
            "errors",
        ],
        rows,
        caption=(
            "recalled/s = requests whose recall finished within its deadline (x-memory-status ok or none); "
            "CPU ms/req = the CPU time of that server process (proxy or emulator) per request over the run."
        ),
    )
    budget = proxy_cpu + emulator_behind
    print_notes(
        [
            (
                "every request: a different question and user (user-00000..00999), so each one embeds and recalls "
                "(query cache off); the proxy recalls within its deadline and injects the block into the system message."
            ),
            (
                f"CPU per proxied request: proxy {proxy_cpu:.2f} ms + emulator {emulator_behind:.2f} ms; on 2 idle "
                f"cores that allows ~{2000 / budget:,.0f} requests/s before wrk's own share (the measured rate counts "
                "every other process on the machine as well)."
            ),
            f"proxy resident memory (VmRSS): {rss_ready:,.0f} MB once ready, {rss_end:,.0f} MB after the runs.",
            "requests sent on without memory during the measured run (memproxy_degraded_total): "
            + (
                ", ".join(
                    f"{key[6:]} {value:,.0f}"
                    for key, value in sorted(outcomes.items())
                    if key.startswith("cause:") and value
                )
                or "none"
            )
            + ".",
            "machine: 2 cores shared with other engineers' runs while measured: compare within one run.",
        ]
    )
