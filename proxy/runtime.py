"""The long-lived parts one proxy process shares: upstream client, state store, memory service.

Opened once in the app's lifespan (and by CLI commands that need the same parts). Forwarding never
waits for the others: served by ``memproxy serve`` (``background=True``), the proxy forwards at once
and opens the state store (Redis or SQLite) and the memory layer (model, then Qdrant) in background
tasks, retrying each with capped exponential backoff (``MEMPROXY_RECONNECT_BACKOFF`` doubling up to
``MEMPROXY_RECONNECT_BACKOFF_CAP``; every failed try is logged and counted) until it opens. Until
then requests go upstream without memory, /readyz reports each part's problem, memory calls answer
503, and finished turns wait in the spool (:mod:`proxy.learn.spool`), delivered in order once the
state store is up. The worker and the janitor start when both parts are up. Once open, a Redis that
goes away and comes back is reconnected by its client on the next call; meanwhile the same holds.

Some configurations are refused before anything opens (:func:`proxy.config.split_problem`): a
shared Redis with per-replica embedded memories, or a shared Qdrant with per-replica SQLite state,
would silently split one user's data across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from proxy import janitor
from proxy.config import Settings, split_problem
from proxy.errors import MemproxyError
from proxy.forward import Forwarder, make_client, make_transport
from proxy.identity import load_secret
from proxy.learn.extract import make_extractor
from proxy.learn.keys import KeyRing
from proxy.learn.spool import SPOOL_FILE, Spool, deliver
from proxy.learn.worker import Worker
from proxy.memory.embed import Embedder, make_embedder
from proxy.memory.factory import create_memory_service
from proxy.memory.redact import Redactor
from proxy.memory.sealing import StateKeyStore
from proxy.memory.service import MemoryService
from proxy.observe import NOOP, Observer
from proxy.ownership import route_of
from proxy.state import State, open_state

if TYPE_CHECKING:
    from proxy.memory.upkeep import Upkeep

log = logging.getLogger("memproxy.runtime")

T = TypeVar("T")

STARTING = "starting"
FIRST_OPEN_TIMEOUT = 5.0
"""Seconds the start-up waits for the state store's first try before serving without it."""


class MemoryUnavailable(MemproxyError):
    """The memory layer did not start (or not yet): the proxy forwards, memory calls cannot run."""


class StateUnavailable(MemoryUnavailable):
    """The state store is not open (yet): what needs it cannot run; forwarding goes on.

    A :class:`MemoryUnavailable`: the memory API answers it with 503 ``memory_unavailable``.
    """


class SplitDeployment(MemproxyError):
    """The settings would split one user's data across replicas (:func:`proxy.config.split_problem`)."""


@dataclass
class Runtime:
    settings: Settings
    http: httpx2.AsyncClient
    forwarder: Forwarder
    secret: bytes
    spool: Spool
    """Finished turns the state store could not take, on local disk until it can (:mod:`proxy.learn.spool`)."""
    store: State | None = None
    """The state store once open; :attr:`state` is the way to use it."""
    memory: MemoryService | None = None
    problems: dict[str, str] = field(default_factory=dict)
    """Why a part is not up (``state``, ``memory``, ``worker``): ``starting``, or its last error."""
    counters: Counter[str] = field(default_factory=Counter)
    keys: KeyRing = field(default_factory=KeyRing)
    """Tenants' API keys from live requests, process memory only (hooks: ``keys.remember``)."""
    janitor: asyncio.Task[None] | None = None
    """Removes expired memories on a schedule, with an audit entry (proxy/janitor.py)."""
    worker: Worker | None = None
    """The in-process extraction worker (``MEMPROXY_WORKER_IN_PROXY``)."""
    upkeep: Upkeep | None = None
    """Optimizes the embedded store when enough points wait for its index (proxy/memory/upkeep.py)."""
    observer: Observer = NOOP
    """Timings of recalls and extractions (the app installs its metrics'; the forwarder has its own)."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    """Background openers and the spool's delivery loop, cancelled at exit."""
    spool_kick: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a turn was spooled or the state store opened: the delivery loop runs."""
    dependents_started: bool = False
    """The janitor and the worker were started (they need the state store and the memory layer)."""

    @functools.cached_property
    def redactor(self) -> Redactor:
        """Secrets in captured turns are replaced before they are queued or spooled (as memories are before they are stored)."""
        return Redactor(enabled=self.settings.redact_secrets, extra=self.settings.redact_patterns)

    @property
    def route(self) -> str:
        """The upstream and Assistants mode this process acts through (:func:`proxy.ownership.route_of`)."""
        return route_of(self.settings)

    @property
    def state(self) -> State:
        """The state store, or :class:`StateUnavailable` while it is not open: callers fail open."""
        if self.store is None:
            raise StateUnavailable(f"the state store is unavailable: {self.problems.get('state', 'not opened')}")
        return self.store

    @property
    def memory_ready(self) -> bool:
        """Memory works end to end: the memory layer and the state store (jobs, fences, audit) are open."""
        return self.memory is not None and self.store is not None

    def count(self, name: str, amount: int = 1) -> None:
        """Event counters (degraded causes, captured turns); exported as metrics."""
        self.counters[name] += amount

    def require_memory(self) -> MemoryService:
        """The memory service, or :class:`MemoryUnavailable` saying why there is none."""
        if self.memory is None:
            raise MemoryUnavailable(f"the memory layer is unavailable: {self.problems.get('memory', 'not opened')}")
        return self.memory

    def turn_delivered(self) -> None:
        """A spooled turn reached the job queue: counted as captured, the worker nudged."""
        self.count("turns.delivered")
        self.count("turns.captured")
        if self.worker is not None:
            self.worker.wake()

    def kick_spool(self) -> None:
        """Deliver the spool now (a turn was spooled, or the state store is back)."""
        self.spool_kick.set()

    def background(self, work: Awaitable[None], name: str) -> None:
        self.tasks.append(asyncio.ensure_future(work))
        self.tasks[-1].set_name(f"memproxy-{name}")


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, embedder: Embedder | None = None, background: bool = False
) -> AsyncIterator[Runtime]:
    """Open every shared part; ``embedder`` lets tests and benchmarks share one loaded model.

    ``background``: the proxy serves at once and opens, in tasks retrying until they succeed, what is
    not up yet: the state store (tried once first, so a healthy one is open when serving starts) and
    the memory layer (a model load, perhaps a first download, then the store). Without it (the CLI,
    the standalone worker) each part is tried once: the state store must open, the memory layer
    reports its failure. Refuses settings that would split users' data (:class:`SplitDeployment`).
    """
    problem = split_problem(settings)
    if problem is not None:
        raise SplitDeployment(problem)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_secret(settings)
    transport = make_transport(settings)
    async with make_client(settings, transport) as http:
        spool = await Spool.open(settings.data_dir / SPOOL_FILE)
        runtime = Runtime(settings, http, Forwarder(http, transport, settings), secret, spool)
        runtime.keys = KeyRing(settings.extract_key_ttl)
        runtime.problems["memory"] = STARTING
        owned: list[Embedder] = []
        try:
            if background:
                await first_state(runtime)
                runtime.background(deliver_spool(runtime), "spool")
                runtime.background(start_memory(runtime, embedder, retry=True, owned=owned, upkeep=True), "memory")
            else:
                state_up(runtime, await open_state(settings))
                await start_memory(runtime, embedder, owned=owned)
            yield runtime
        finally:
            await close_runtime(runtime, owned)


async def close_runtime(runtime: Runtime, owned: list[Embedder]) -> None:
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    await janitor.stop(runtime.janitor)
    if runtime.worker is not None:
        await runtime.worker.stop()
    if runtime.memory is not None:
        await runtime.memory.aclose()
    for embedder in owned:
        await embedder.aclose()
    if runtime.store is not None:
        await runtime.store.close()
    await runtime.spool.close()


# --- opening what may be down: once, or until it opens -----------------------------------------------


async def keep_trying(runtime: Runtime, part: str, attempt: Callable[[], Awaitable[T]], *, retry: bool) -> T | None:
    """``attempt()``'s result; each failure noted in ``problems[part]``, logged and counted
    (``retries.<part>``). With ``retry`` it is tried again after a capped exponential backoff (with
    some jitter, so replicas do not knock in step) until it succeeds; without, None after one failure.
    """
    settings = runtime.settings
    delay = settings.reconnect_backoff
    for tries in itertools.count(1):
        try:
            return await attempt()
        except Exception as exc:  # noqa: BLE001 - fail open: forwarding never depends on this part
            problem = runtime.problems[part] = f"{type(exc).__name__}: {exc}"
        runtime.count(f"retries.{part}")
        if not retry:
            log.error("%s unavailable, forwarding without it: %s", part, problem)
            return None
        wait = delay * random.uniform(0.8, 1.2)
        log.warning("%s unavailable (try %d), forwarding without it; next try in %.1fs: %s", part, tries, wait, problem)
        await asyncio.sleep(wait)
        delay = min(settings.reconnect_backoff_cap, delay * 2)
    raise AssertionError("unreachable")


async def first_state(runtime: Runtime) -> None:
    """Try the state store once before serving; if it is not there, keep trying in the background."""
    settings = runtime.settings
    runtime.problems["state"] = STARTING
    try:
        opened = await asyncio.wait_for(open_state(settings), FIRST_OPEN_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the proxy serves without it and retries
        runtime.problems["state"] = f"{type(exc).__name__}: {exc}"
        runtime.count("retries.state")
        log.warning("state store unavailable, forwarding without it; retrying: %s", runtime.problems["state"])
        runtime.background(reopen_state(runtime), "state")
        return
    state_up(runtime, opened)


async def reopen_state(runtime: Runtime) -> None:
    await asyncio.sleep(runtime.settings.reconnect_backoff)
    opened = await keep_trying(runtime, "state", lambda: open_state(runtime.settings), retry=True)
    if opened is not None:
        state_up(runtime, opened)
        log.info("state store open after %d failed tries", runtime.counters["retries.state"])


def state_up(runtime: Runtime, state: State) -> None:
    runtime.store = state
    runtime.problems.pop("state", None)
    runtime.kick_spool()
    start_dependents(runtime)


async def start_memory(
    runtime: Runtime,
    embedder: Embedder | None,
    *,
    retry: bool = False,
    owned: list[Embedder] | None = None,
    upkeep: bool = False,
) -> None:
    """The embedding model, then the memory service over it; each failure reported, never raised.

    A model this function loads is appended to ``owned`` (the caller closes it): the service does not
    own it, so a store that fails to open can be tried again without loading the model again.
    ``upkeep`` (a serving proxy): the embedded store is kept optimized (:func:`start_upkeep`).
    """
    settings = runtime.settings
    if embedder is None:  # loading a model blocks for a while: not on the event loop
        embedder = await keep_trying(
            runtime, "memory", lambda: asyncio.to_thread(make_embedder, settings, runtime.http), retry=retry
        )
        if embedder is None:
            return
        if owned is not None:
            owned.append(embedder)
    model = embedder
    memory = await keep_trying(
        runtime,
        "memory",
        lambda: create_memory_service(
            settings,
            runtime.http,
            secret=runtime.secret,
            keys=StateKeyStore(lambda: runtime.state),  # read when used: the state store may open later
            embedder=model,
            owns_embedder=False,
        ),
        retry=retry,
    )
    if memory is None:
        return
    if upkeep:
        await start_upkeep(runtime, memory)
    runtime.memory = memory
    start_dependents(runtime)
    runtime.problems.pop("memory", None)  # after the worker started: a ready proxy has both


async def start_upkeep(runtime: Runtime, memory: MemoryService) -> None:
    """The embedded store's upkeep (``MEMPROXY_EDGE_OPTIMIZE_AFTER``): optimized now if enough points
    wait for its index (memory is not ready meanwhile; forwarding goes on), then checked on a schedule.
    Nothing for a Qdrant server, which optimizes itself."""
    settings = runtime.settings
    if settings.qdrant_url or settings.edge_optimize_after <= 0:
        return
    from proxy.memory.store_edge import EdgeStore
    from proxy.memory.upkeep import Upkeep

    if not isinstance(memory.store, EdgeStore):
        return
    runtime.upkeep = Upkeep(memory.store, after=settings.edge_optimize_after, interval=settings.edge_optimize_interval)
    try:
        await runtime.upkeep.check(start=True)
    except BaseException:  # cancelled at exit before memory was handed over: nobody else closes it
        await memory.aclose()
        raise
    runtime.background(runtime.upkeep.run(), "upkeep")


def start_dependents(runtime: Runtime) -> None:
    """The janitor and the in-process worker, once the memory layer and the state store are both open."""
    if runtime.dependents_started or runtime.memory is None or runtime.store is None:
        return
    runtime.dependents_started = True
    runtime.janitor = asyncio.ensure_future(
        janitor.run(runtime.memory, runtime.store, runtime.secret, runtime.settings.janitor_interval)
    )
    try:
        runtime.worker = start_worker(runtime)
    except Exception as exc:  # noqa: BLE001 - fail open: the proxy serves without extraction
        runtime.problems["worker"] = f"{type(exc).__name__}: {exc}"
        log.error("extraction worker unavailable: %s", runtime.problems["worker"])


# --- the spool's delivery ----------------------------------------------------------------------------


async def deliver_spool(runtime: Runtime) -> None:
    """Move spooled turns into the job queue whenever kicked; retried with backoff while the store refuses."""
    settings = runtime.settings
    delay = settings.reconnect_backoff
    while True:
        await runtime.spool_kick.wait()
        runtime.spool_kick.clear()
        if runtime.store is None:
            continue  # kicked again once it opens
        try:
            delivered = await deliver(runtime.spool, runtime.store, runtime.secret, on_delivered=runtime.turn_delivered)
        except Exception as exc:  # noqa: BLE001 - the store is still away: try again later
            runtime.count("retries.spool")
            log.warning(
                "spooled turns not delivered (%s, %d waiting); next try in %.1fs",
                type(exc).__name__,
                runtime.spool.pending,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(settings.reconnect_backoff_cap, delay * 2)
            runtime.kick_spool()
            continue
        delay = settings.reconnect_backoff
        if delivered:
            log.info("%d spooled turns delivered to the job queue", delivered)


# --- the worker ---------------------------------------------------------------------------------------


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
