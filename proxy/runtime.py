"""The long-lived parts one proxy process shares: upstream client, state store, memory service.

Opened once in the app's lifespan (and by CLI commands that need the same parts). The memory
layer is optional at run time: if it cannot start (no embedding model, store unreadable) the
proxy still forwards, reports the reason on /readyz, and answers memory calls with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2

from proxy import janitor
from proxy.config import Settings
from proxy.errors import MemproxyError
from proxy.forward import Forwarder, make_client
from proxy.identity import load_secret
from proxy.learn.extract import make_extractor
from proxy.learn.keys import KeyRing
from proxy.learn.worker import Worker
from proxy.memory.embed import Embedder, make_embedder
from proxy.memory.factory import create_memory_service
from proxy.memory.sealing import StateKeyStore
from proxy.memory.service import MemoryService
from proxy.observe import NOOP, Observer
from proxy.ownership import route_of
from proxy.state import State, open_state

log = logging.getLogger("memproxy.runtime")


class MemoryUnavailable(MemproxyError):
    """The memory layer did not start (or not yet): the proxy forwards, memory calls cannot run."""


@dataclass
class Runtime:
    settings: Settings
    http: httpx2.AsyncClient
    forwarder: Forwarder
    state: State
    secret: bytes
    memory: MemoryService | None = None
    problems: dict[str, str] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    keys: KeyRing = field(default_factory=KeyRing)
    """Tenants' API keys from live requests, process memory only (hooks: ``keys.remember``)."""
    janitor: asyncio.Task[None] | None = None
    """Removes expired memories on a schedule, with an audit entry (proxy/janitor.py)."""
    worker: Worker | None = None
    """The in-process extraction worker (``MEMPROXY_WORKER_IN_PROXY``)."""
    observer: Observer = NOOP
    """Timings of recalls and extractions (the app installs its metrics'; the forwarder has its own)."""

    @property
    def route(self) -> str:
        """The upstream and Assistants mode this process acts through (:func:`proxy.ownership.route_of`)."""
        return route_of(self.settings)

    def count(self, name: str, amount: int = 1) -> None:
        """Event counters (degraded causes, captured turns); exported as metrics."""
        self.counters[name] += amount

    def require_memory(self) -> MemoryService:
        """The memory service, or :class:`MemoryUnavailable` saying why there is none."""
        if self.memory is None:
            raise MemoryUnavailable(f"the memory layer is unavailable: {self.problems.get('memory', 'not opened')}")
        return self.memory


STARTING = "starting"


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, embedder: Embedder | None = None, background: bool = False
) -> AsyncIterator[Runtime]:
    """Open every shared part; ``embedder`` lets tests and benchmarks share one loaded model.

    ``background``: the proxy serves at once and opens the memory layer (a model load, perhaps a
    first download) in a task, forwarding without memory until it is up; /readyz says "starting".
    The standalone worker has nothing to do without memory, so it waits.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_secret(settings)
    async with make_client(settings) as http:
        state = await open_state(settings)
        runtime = Runtime(settings, http, Forwarder(http, settings), state, secret)
        runtime.keys = KeyRing(settings.extract_key_ttl)
        runtime.problems["memory"] = STARTING
        starter = asyncio.ensure_future(start_memory(runtime, embedder))
        if not background:
            await starter
        try:
            yield runtime
        finally:
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
            await janitor.stop(runtime.janitor)
            if runtime.worker is not None:
                await runtime.worker.stop()
            if runtime.memory is not None:
                await runtime.memory.aclose()
            await state.close()


async def start_memory(runtime: Runtime, embedder: Embedder | None) -> None:
    """Memory service, then the in-process worker; each failure is reported, never raised."""
    settings = runtime.settings
    try:
        owned = embedder is None
        if owned:  # loading a model blocks for a while: not on the event loop
            embedder = await asyncio.to_thread(make_embedder, settings, runtime.http)
        memory = await create_memory_service(
            settings,
            runtime.http,
            secret=runtime.secret,
            keys=StateKeyStore(runtime.state),
            embedder=embedder,
            owns_embedder=owned,
        )
    except Exception as exc:  # noqa: BLE001 - fail open: forwarding never depends on the memory layer
        runtime.problems["memory"] = f"{type(exc).__name__}: {exc}"
        log.error("memory layer unavailable, forwarding only: %s", runtime.problems["memory"])
        return
    runtime.memory = memory
    runtime.janitor = asyncio.ensure_future(
        janitor.run(memory, runtime.state, runtime.secret, settings.janitor_interval)
    )
    try:
        runtime.worker = start_worker(runtime)
    except Exception as exc:  # noqa: BLE001 - fail open: the proxy serves without extraction
        runtime.problems["worker"] = f"{type(exc).__name__}: {exc}"
        log.error("extraction worker unavailable: %s", runtime.problems["worker"])
    del runtime.problems["memory"]  # ready: memory and its worker both up


def build_worker(runtime: Runtime, **options: Any) -> Worker:
    """A worker over the runtime's state store, memory service, upstream client and key ring."""
    settings = runtime.settings
    extractor = make_extractor(settings, runtime.http)
    memory, keys = runtime.require_memory(), runtime.keys
    return Worker(runtime.state, memory, extractor, settings, secret=runtime.secret, keys=keys, **options)


def start_worker(runtime: Runtime) -> Worker | None:
    """The in-process worker of ``memproxy serve``, started; None when off or memory is unavailable."""
    if not runtime.settings.worker_in_proxy or runtime.memory is None:
        return None
    return build_worker(runtime, observer=runtime.observer).start()
