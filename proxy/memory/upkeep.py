"""The embedded store keeps itself optimized: when enough points wait for the HNSW index, optimize.

Qdrant Edge writes points to a segment searched by a plain scan (a new point, and an indexed one
whose payload changed: Edge moves it out) and builds its HNSW index only when asked (``optimize()``);
a Qdrant server optimizes itself, so this concerns the embedded store only. Left alone, a store that
took a bulk load answers a large subject's recall from a scan (100,000 memories in one subject: p50
about 38 ms instead of 6, ``memproxy bench recall``).

:class:`Upkeep` reads the store's counters (``shard.info()``, microseconds) at start-up and then every
``interval`` seconds. Points waiting for the index = how much the indexed-vector count grew since the
last optimize (each point landing in a plain segment adds its sparse vector: see
:class:`~proxy.memory.edge_optimize.IndexState`), or at start-up the points without an indexed dense
vector. It optimizes (:meth:`EdgeStore.optimize_apart`, a child process) once ``after`` are waiting and
the count did not move since the previous check (a bulk load is optimized once, at its end), or
``GROWTH_CAP`` times as many if writes never pause; at start-up at once (memory is not ready yet).
Each run is logged (one INFO line: points, seconds) and counted; a failure is logged and counted,
never raised, and tried again after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from .store_edge import EdgeStore, Optimized

log = logging.getLogger("memproxy.upkeep")

GROWTH_CAP = 4
"""Points waiting, in multiples of ``after``, past which a store written without a pause is optimized anyway."""
BACKOFF_CAP = 3600.0
"""Longest wait, in seconds, before optimizing again after failures (doubling from ``interval``)."""


class Upkeep:
    """Optimizes one embedded store when it is worth it; its counters are exported as metrics."""

    def __init__(self, store: EdgeStore, *, after: int, interval: float) -> None:
        self.store = store
        self.after = after
        self.interval = interval
        self.baseline: int | None = None
        """The indexed-vector count when no point waited (after the last optimize); None before a look."""
        self.seen: int | None = None
        """The indexed-vector count at the previous check."""
        self.waiting: int | None = None
        """Points waiting for the index at the last check (a gauge)."""
        self.runs: Counter[str] = Counter()
        """Optimize runs by outcome: ``ok``, ``error``."""
        self.seconds = 0.0
        """Seconds spent in optimize runs, all outcomes (the store waits meanwhile)."""
        self.failures = 0
        self.retry_at = 0.0

    def due(self, waiting: int, *, settled: bool) -> bool:
        """Whether ``waiting`` points warrant an optimize now; ``settled``: no write is coming in."""
        if waiting < self.after or time.monotonic() < self.retry_at:
            return False
        return settled or waiting >= GROWTH_CAP * self.after

    async def check(self, *, start: bool = False) -> Optimized | None:
        """Optimize if due (``start``: the proxy is not serving memory yet, no need to wait for a pause).

        Returns what the run did, or None when none ran or it failed (logged and counted)."""
        try:
            state = await self.store.index_state()
        except Exception as exc:  # noqa: BLE001 - upkeep never fails the proxy: the next check tries again
            log.warning("memory store upkeep: cannot read the store's state (%s: %s)", type(exc).__name__, exc)
            return None
        if self.baseline is None:  # first look: what is not indexed has waited since before this process
            self.baseline = state.indexed - state.unindexed
        settled = start or self.seen == state.indexed
        self.seen = state.indexed
        self.waiting = waiting = state.indexed - self.baseline
        if not self.due(waiting, settled=settled):
            return None
        return await self.optimize(waiting)

    async def optimize(self, waiting: int) -> Optimized | None:
        log.debug("optimizing the memory store: %d points waiting for the index", waiting)
        started = time.perf_counter()
        try:
            done = await self.store.optimize_apart()
        except Exception as exc:  # noqa: BLE001 - a failed optimize leaves the store as it was
            self.seconds += time.perf_counter() - started
            self.runs["error"] += 1
            self.failures += 1
            wait = min(BACKOFF_CAP, self.interval * 2**self.failures)
            self.retry_at = time.monotonic() + wait
            log.error("memory store optimize failed (next try in %.0f s): %s: %s", wait, type(exc).__name__, exc)
            return None
        self.seconds += done.seconds
        self.runs["ok"] += 1
        self.failures = 0
        self.baseline = done.after.indexed  # what Edge leaves plain (too few to index) does not wait
        self.waiting, self.seen = 0, None  # written meanwhile (held on the store's thread): not settled yet
        log.info(
            "memory store optimized: %d points, %d were waiting for the index, %d not indexed now; "
            "%d -> %d segments; %.1f s",
            done.after.points,
            waiting,
            done.after.unindexed,
            done.before.segments,
            done.after.segments,
            done.seconds,
        )
        return done

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.check()
