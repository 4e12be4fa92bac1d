"""What the command line runs: each ``memproxy`` command's work as one async call over the library.

The commands in :mod:`proxy.cli.commands` parse options and print; these open the same parts the
proxy uses (state store, memory service, upstream client) for one task and close them after.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from starlette.datastructures import Headers

from proxy import tracing
from proxy.audit import head, parse_head, verify
from proxy.config import Settings
from proxy.erasure import erase_subject, export_subject
from proxy.identity import load_secret, tenant_for
from proxy.learn.worker import WorkerStats
from proxy.migrate import Migration, Progress, seen_threads
from proxy.observe import NOOP
from proxy.owner import Owner
from proxy.runtime import Runtime, build_worker, open_runtime
from proxy.state import open_state
from proxy.tracing_http import TracingObserver


async def run_standalone(
    settings: Settings, *, once: bool = False, embedder: Any = None, tracer_provider: Any = None
) -> WorkerStats:
    """``memproxy worker``: the runtime's parts without HTTP, one worker, until SIGINT/SIGTERM.

    ``once``: handle the jobs due now, then return. Returns the worker's counters. Each job is a span
    while tracing (``tracer_provider``, default one from ``OTEL_*``: :mod:`proxy.tracing`).
    """
    settings = settings.model_copy(update={"worker_in_proxy": False})  # this process runs its own
    provider = tracer_provider if tracer_provider is not None else tracing.provider_from_env()
    tracer = tracing.tracer_of(provider) if provider is not None else None
    try:
        with tracing.using(tracer):
            return await _serve_worker(settings, once, embedder, traced=tracer is not None)
    finally:
        if provider is not None and tracer_provider is None:
            provider.shutdown()  # exports what is left


async def _serve_worker(settings: Settings, once: bool, embedder: Any, *, traced: bool) -> WorkerStats:
    async with open_runtime(settings, embedder=embedder) as runtime:
        worker = build_worker(runtime, observer=TracingObserver(NOOP) if traced else NOOP)
        if once:
            await worker.drain()
            return worker.stats
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, worker.request_stop)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
                pass
        await worker.serve()
        return worker.stats


def cli_tenant(settings: Settings, secret: bytes, tenant: str | None, api_key: str | None) -> str:
    """``--tenant``, else ``MEMPROXY_TENANT``, else the tenant of ``--api-key`` (as the proxy derives it)."""
    if tenant:
        return tenant
    derived = tenant_for(Headers({"authorization": f"Bearer {api_key}"} if api_key else {}), settings, secret)
    if derived is None:
        raise ValueError("name the tenant: --tenant T, --api-key K (the application's key) or MEMPROXY_TENANT")
    return derived


def upstream_key(settings: Settings, api_key: str | None) -> str | None:
    """The credential for upstream calls: ``--api-key``, else ``MEMPROXY_LLM_API_KEY``."""
    if api_key:
        return api_key
    return settings.llm_api_key.get_secret_value() if settings.llm_api_key else None


def offline(settings: Settings) -> Settings:
    """A CLI command runs no worker of its own."""
    return settings.model_copy(update={"worker_in_proxy": False})


def cli_owner(runtime: Runtime, user: str, tenant: str | None, api_key: str | None) -> Owner:
    """The owner a command acts for: ``--user`` inside the tenant of :func:`cli_tenant`."""
    return Owner.of(runtime.secret, cli_tenant(runtime.settings, runtime.secret, tenant, api_key), user)


async def run_forget(
    settings: Settings, user: str, *, tenant: str | None, api_key: str | None, keep_upstream: bool
) -> dict[str, Any]:
    """``memproxy forget``: one erasure, with the command's key for the upstream deletions."""
    async with open_runtime(offline(settings)) as runtime:
        owner = cli_owner(runtime, user, tenant, api_key)
        key = upstream_key(settings, api_key)
        return (await erase_subject(runtime, owner, api_key=key, keep_upstream=keep_upstream)).as_json()


async def run_export(settings: Settings, user: str, *, tenant: str | None, api_key: str | None) -> dict[str, Any]:
    """``memproxy export``: everything stored about one user."""
    async with open_runtime(offline(settings)) as runtime:
        return await export_subject(runtime, cli_owner(runtime, user, tenant, api_key))


async def run_verify(
    settings: Settings, *, tenant: str | None, api_key: str | None, kept: str | None = None
) -> dict[str, Any]:
    """``memproxy audit verify``: the tenant's keyed chain from the start, against its stored head and ``kept``."""
    secret = load_secret(settings)
    resolved = cli_tenant(settings, secret, tenant, api_key)
    outside = parse_head(kept) if kept is not None else None
    async with await open_state(settings) as state:
        verdict = await verify(state, resolved, secret=secret, head=outside)
    return {**verdict.as_json(), "tenant": resolved}


async def run_head(settings: Settings, *, tenant: str | None, api_key: str | None) -> dict[str, Any]:
    """``memproxy audit head``: the tenant's stored head, to be kept outside memproxy."""
    resolved = cli_tenant(settings, load_secret(settings), tenant, api_key)
    async with await open_state(settings) as state:
        found = await head(state, resolved)
    return {"tenant": resolved, "head": str(found) if found else None}


async def run_migrate(
    settings: Settings,
    user: str,
    threads: list[str],
    *,
    seen: bool,
    tenant: str | None,
    api_key: str | None,
    progress: Progress | None = None,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """``memproxy migrate``: the runtime's parts without HTTP serving, one migration."""
    async with open_runtime(offline(settings)) as runtime:
        owner = cli_owner(runtime, user, tenant, api_key)
        wanted = list(threads) + (await seen_threads(runtime, owner) if seen else [])
        if not wanted:
            raise ValueError("no thread to migrate: name some with --thread / --threads-file, or pass --seen")
        migration = Migration(runtime, owner, api_key=upstream_key(settings, api_key))
        return (await migration.run(wanted, progress=progress, max_chunks=max_chunks)).as_json()
