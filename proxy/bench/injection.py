"""The injection path of ``memproxy bench overhead``: recall + injection with a full tenant.

A data directory is filled with ``memories`` memories in one tenant (spread over 1,000 users, the
corpus of ``bench recall``: real embeddings of a sentence pool, noised per memory), then a proxy
serves it with ``MEMPROXY_TENANT`` fixed to that tenant. Each measured call names a user who has
memories and asks something: the proxy embeds the question, searches, renders the block and
rewrites the body before forwarding. Compared with the same calls straight to the emulator. Every
call asks a question no call asked before, so the query-embedding cache never answers one.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx2

from proxy.bench.corpus import fact_pool, queries
from proxy.bench.harness import child_server, free_port
from proxy.bench.load import Plan, Rows, Server, run_python
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


RESPONSE = '{"model": "' + MODEL + '", "input": "%s (%d)", "safety_identifier": "%s"}'
"""A Responses call naming a user with memories, and a question no call asked before (its number appended)."""


def responses_plan(server: Server) -> Plan:
    users = [subject_name(index) for index in range(SUBJECTS)]
    return Plan("/v1/responses", server.headers, template=RESPONSE, asks=queries(500), users=users)


async def make_threads(base: str, count: int) -> tuple[str, list[str]]:
    """An assistant and ``count`` threads, each owned by a user and holding a question of its own."""
    asks = queries(500)
    async with httpx2.AsyncClient(headers={**HEADERS, "openai-beta": "assistants=v2"}, timeout=60) as client:
        assistant = (await client.post(base + "/v1/assistants", json={"model": MODEL})).json()["id"]

        async def create(index: int) -> str:
            body = {
                "metadata": {"user_id": subject_name(index % SUBJECTS)},
                "messages": [{"role": "user", "content": f"{asks[index % len(asks)]} ({index})"}],
            }
            return str((await client.post(base + "/v1/threads", json=body)).json()["id"])

        threads = []
        for first in range(0, count, 16):
            threads += await asyncio.gather(*(create(index) for index in range(first, min(count, first + 16))))
    return assistant, threads


def run_plan(server: Server, count: int) -> Plan:
    """Run creation, one fresh thread per call (a thread with an active run refuses another)."""
    assistant, threads = asyncio.run(make_threads(server.child.url, count))
    headers = {**server.headers, "openai-beta": "assistants=v2"}
    body = json.dumps({"assistant_id": assistant}).encode()
    return Plan("", headers, body=body, paths=[f"/v1/threads/{thread}/runs" for thread in threads])


def _plan_of(plans: dict[str, Plan], server: Server) -> Plan:
    return plans[server.name]


RUNS_PER_SECOND = 150
"""Threads prepared per second of a run-creation cell (more than the proxy creates runs with recall)."""


def measure(servers: list[Server], levels: list[int], rows: Rows, seconds: float) -> list[list[str]]:
    table = []
    for concurrency in levels:
        table += rows("responses + recall", concurrency, servers, responses_plan)
    count = int(seconds * RUNS_PER_SECOND)
    for concurrency in levels:
        plans = {server.name: run_plan(server, count) for server in servers}
        # wrk cannot stop after a list of paths: these calls come from the Python generator
        table += rows("run create + recall", concurrency, servers, partial(_plan_of, plans), runner=run_python)
    return table


def run(memories: int, levels: list[int], rows: Rows, seconds: float) -> tuple[list[list[str]], str]:
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
            servers = [Server("direct", emulator, HEADERS), Server("memproxy", proxy, HEADERS)]
            table = measure(servers, levels, rows, seconds)
    return table, summary


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
