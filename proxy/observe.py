"""Timings reported by the code that does the work: upstream calls, recalls, extractions.

The forwarder, the recall hook and the worker each take one ``perf_counter()`` pair around their
call and hand the result to an :class:`Observer`. The default observes nothing; the app installs
the Prometheus one (:class:`proxy.metrics.PrometheusObserver`) on the runtime.

Outcomes are ``ok``, ``error`` (the call raised) or ``cancelled`` (a deadline, a client gone away,
a worker stopping).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Observer:
    """Receives timings; every method is a no-op here, so a subclass overrides only what it needs."""

    def upstream(self, seconds: float) -> None:
        """One request sent upstream, until the upstream's response headers (or its failure)."""

    def recall(self, outcome: str, seconds: float) -> None:
        """One memory recall of a request hook, within its deadline."""

    def extraction(self, outcome: str, seconds: float) -> None:
        """One extractor call of the in-process worker."""


NOOP = Observer()


async def timed(report: Callable[[str, float], None], work: Awaitable[T]) -> T:
    """Await ``work``, then report its outcome and how long it took, however it ended."""
    started = time.perf_counter()
    outcome = "cancelled"  # a deadline (TimeoutError), a client gone away, a worker stopping
    try:
        result = await work
        outcome = "ok"
        return result
    except TimeoutError:
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        report(outcome, time.perf_counter() - started)
