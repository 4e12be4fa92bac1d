"""``memproxy bench overhead``: what the proxy adds to a call, plain and streamed.

The same requests go to the emulator directly and through the proxy in one run, at the same
concurrency, and the table reports the difference of each percentile. Memory is off here (pure
forwarding); the injection path is measured separately.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx2

from proxy.bench.harness import (
    WARMUP,
    Call,
    Child,
    Sample,
    child_server,
    drive,
    free_port,
    ms,
    percentile,
    print_table,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}


def plain_call(base: str) -> Call:
    body = json.dumps(CHAT).encode()

    async def call(client: httpx2.AsyncClient) -> Sample:
        started = time.perf_counter()
        response = await client.post(base + "/v1/chat/completions", content=body, headers=HEADERS)
        response.raise_for_status()
        return Sample(time.perf_counter() - started)

    return call


def stream_call(base: str) -> Call:
    body = json.dumps({**CHAT, "stream": True}).encode()

    async def call(client: httpx2.AsyncClient) -> Sample:
        started = time.perf_counter()
        first: float | None = None
        async with client.stream("POST", base + "/v1/chat/completions", content=body, headers=HEADERS) as response:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                if first is None and b"data:" in chunk:
                    first = time.perf_counter() - started
        return Sample(time.perf_counter() - started, first)

    return call


Run = tuple[list[Sample], float]


def _row(name: str, concurrency: int, direct: Run, proxied: Run, proxy_cpu: float) -> list[str]:
    direct_total = [s.total for s in direct[0]]
    proxied_total = [s.total for s in proxied[0]]
    added = [ms(percentile(proxied_total, q) - percentile(direct_total, q)) for q in (50, 95, 99)]
    rps = [f"{len(direct[0]) / direct[1]:.0f}", f"{len(proxied[0]) / proxied[1]:.0f}"]
    firsts = [[s.first_event for s in samples if s.first_event is not None] for samples, _ in (direct, proxied)]
    ttfe = ms(percentile(firsts[1], 50) - percentile(firsts[0], 50)) if all(firsts) else "-"
    cpu = ms(proxy_cpu / (len(proxied[0]) + WARMUP))  # the CPU reading spans the warm-up too
    return [
        name,
        str(concurrency),
        ms(percentile(direct_total, 50)),
        ms(percentile(proxied_total, 50)),
        *added,
        ttfe,
        *rps,
        cpu,
    ]


async def _measure(emulator: Child, proxy: Child, requests: int, levels: list[int]) -> list[list[str]]:
    rows = []
    for name, factory in (("chat", plain_call), ("chat stream", stream_call)):
        for concurrency in levels:
            direct = await drive(factory(emulator.url), requests, concurrency)
            before = proxy.cpu_seconds()
            proxied = await drive(factory(proxy.url), requests, concurrency)
            rows.append(_row(name, concurrency, direct, proxied, proxy.cpu_seconds() - before))
    return rows


COLUMNS = [
    "scenario",
    "conc",
    "direct p50",
    "proxied p50",
    "added p50",
    "added p95",
    "added p99",
    "added TTFE p50",
    "direct rps",
    "proxied rps",
    "proxy CPU/req",
]


def run(requests: int, concurrency: int, memories: int = 0) -> None:
    emulator_port, proxy_port = free_port(), free_port()
    levels = sorted({1, concurrency})
    with child_server(["emulator", "--port", str(emulator_port)], emulator_port) as emulator:
        upstream = f"{emulator.url}/v1"
        args = ["serve", "--port", str(proxy_port), "--upstream", upstream]
        with child_server(args, proxy_port, env={"MEMPROXY_LOG_LEVEL": "warning"}) as proxy:
            rows = asyncio.run(_measure(emulator, proxy, requests, levels))
    print_table(f"memproxy bench overhead: forwarding ({requests} requests per cell, milliseconds)", COLUMNS, rows)
    if memories:
        from proxy.bench.injection import run as run_injection

        rows, summary = run_injection(memories, requests, levels, _row)
        print_table(f"memproxy bench overhead: recall + injection ({summary}; milliseconds)", COLUMNS, rows)
