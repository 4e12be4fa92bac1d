"""The injection path of ``memproxy bench overhead``: recall + injection with a full tenant.

A data directory is filled with ``memories`` memories in one tenant (spread over 1,000 users, the
corpus of ``bench recall``: real embeddings of a sentence pool, noised per memory), then a proxy
serves it with ``MEMPROXY_TENANT`` fixed to that tenant. Each measured call names a user who has
memories and asks something: the proxy embeds the question, searches, renders the block and
rewrites the body before forwarding. Compared with the same calls straight to the emulator.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path

import httpx2

from proxy.bench.corpus import fact_pool, queries
from proxy.bench.harness import Call, Child, Sample, child_server, drive, free_port
from proxy.bench.membench import bench_settings, load_embedder
from proxy.bench.recall.data import SECRET, TENANT, Layout, bulk_load, make_pool, subject_name
from proxy.config import Settings
from proxy.memory.sealing import Sealer, StateKeyStore
from proxy.memory.store_edge import EdgeStore
from proxy.state import open_state

SUBJECTS = 1000
MODEL = "gpt-4o-mini"
HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}


async def fill(data_dir: Path, settings: Settings, memories: int) -> str:
    """Write the tenant's memories where the proxy will find them; returns a one-line summary."""
    embedder = load_embedder(settings)
    pool = await make_pool(embedder, fact_pool(2000), "synthetic facts")
    state = await open_state(settings)  # the proxy finds the owners' data keys where it keeps its own
    sealer = Sealer(StateKeyStore(lambda: state), SECRET)
    path = data_dir / "qdrant" / settings.collection
    store = EdgeStore(path, dim=embedder.dim, sealer=sealer, collection=settings.collection)
    await store.start()
    stats = await bulk_load(store, pool, memories, Layout(f"{SUBJECTS} users", SUBJECTS))
    started = time.perf_counter()
    await store.optimize()
    await store.close()
    await state.close()
    embedder.close()
    return (
        f"{memories:,} memories over {SUBJECTS:,} users: loaded in {stats.upsert_seconds:.0f} s, "
        f"optimized in {time.perf_counter() - started:.0f} s"
    )


def responses_call(base: str) -> Call:
    asks, users = itertools.cycle(queries(500)), itertools.count()

    async def call(client: httpx2.AsyncClient) -> Sample:
        body = {"model": MODEL, "input": next(asks), "safety_identifier": subject_name(next(users) % SUBJECTS)}
        started = time.perf_counter()
        response = await client.post(base + "/v1/responses", content=json.dumps(body), headers=HEADERS)
        response.raise_for_status()
        return Sample(time.perf_counter() - started)

    return call


async def make_threads(base: str, count: int) -> tuple[str, list[str]]:
    """An assistant and ``count`` threads, each owned by a user and holding one question."""
    asks = itertools.cycle(queries(500))
    async with httpx2.AsyncClient(headers={**HEADERS, "openai-beta": "assistants=v2"}, timeout=60) as client:
        assistant = (await client.post(base + "/v1/assistants", json={"model": MODEL})).json()["id"]
        threads = []
        for index in range(count):
            body = {
                "metadata": {"user_id": subject_name(index % SUBJECTS)},
                "messages": [{"role": "user", "content": next(asks)}],
            }
            threads.append((await client.post(base + "/v1/threads", json=body)).json()["id"])
    return assistant, threads


def run_call(base: str, assistant: str, threads: list[str]) -> Call:
    """Run creation, one fresh thread per call (a thread with an active run refuses another)."""
    pending = iter(threads)

    async def call(client: httpx2.AsyncClient) -> Sample:
        body = json.dumps({"assistant_id": assistant})
        url = f"{base}/v1/threads/{next(pending)}/runs"
        started = time.perf_counter()
        response = await client.post(url, content=body, headers={**HEADERS, "openai-beta": "assistants=v2"})
        response.raise_for_status()
        return Sample(time.perf_counter() - started)

    return call


async def measure(emulator: Child, proxy: Child, requests: int, levels: list[int], row) -> list[list[str]]:
    rows = []
    for concurrency in levels:
        direct = await drive(responses_call(emulator.url), requests, concurrency)
        before = proxy.cpu_seconds()
        proxied = await drive(responses_call(proxy.url), requests, concurrency)
        rows.append(row("responses + recall", concurrency, direct, proxied, proxy.cpu_seconds() - before))
    for concurrency in levels:
        total = requests + 50  # the harness warms up with 50 calls
        assistant, direct_threads = await make_threads(emulator.url, total)
        direct = await drive(run_call(emulator.url, assistant, direct_threads), requests, concurrency)
        assistant, proxied_threads = await make_threads(proxy.url, total)
        before = proxy.cpu_seconds()
        proxied = await drive(run_call(proxy.url, assistant, proxied_threads), requests, concurrency)
        rows.append(row("run create + recall", concurrency, direct, proxied, proxy.cpu_seconds() - before))
    return rows


def run(memories: int, requests: int, levels: list[int], row) -> tuple[list[list[str]], str]:
    settings = bench_settings(Path(tempfile.mkdtemp(prefix="memproxy-bench-")))
    if settings.embed_model_path is None:
        raise SystemExit("set MEMPROXY_EMBED_MODEL_PATH to the local embedding model directory")
    summary = asyncio.run(fill(settings.data_dir, settings, memories))
    emulator_port, proxy_port = free_port(), free_port()
    env = {
        "MEMPROXY_DATA_DIR": str(settings.data_dir),
        "MEMPROXY_TENANT": TENANT,
        "MEMPROXY_SECRET": SECRET.decode(),  # the secret the owners' pseudonyms and keys were made with
        "MEMPROXY_LOG_LEVEL": "warning",
        "MEMPROXY_WORKER_IN_PROXY": "false",
        "MEMPROXY_ASSISTANTS": "passthrough",
    }
    with child_server(["emulator", "--port", str(emulator_port)], emulator_port) as emulator:
        args = ["serve", "--port", str(proxy_port), "--upstream", f"{emulator.url}/v1"]
        with child_server(args, proxy_port, env=env) as proxy:
            _wait_ready(proxy.url)
            rows = asyncio.run(measure(emulator, proxy, requests, levels, row))
    return rows, summary


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    """The memory layer opens in the background; measure only once it is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url + "/readyz/memory").status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the proxy's memory layer did not come up")
