"""What a request asks of memory: ``X-Memory`` (the mode) and ``X-Memory-Budget`` (the block's tokens).

``X-Memory``: ``on`` (the default: recall and capture), ``read`` (recall, the turn is not learned),
``write`` (the turn is learned, nothing recalled) or ``off``. Case and surrounding spaces do not
matter. Any other value turns memory off for the request, with ``x-memory-reason: invalid-mode``:
a client that wrote ``false`` or ``none`` meant less memory, never more, so nothing is stored that
it did not ask for; the request itself goes on untouched.

``X-Memory-Budget``: the injected block's budget in o200k tokens for this request, a whole number
from 0 (nothing injected, no recall) up to ``MEMPROXY_MEMORY_BLOCK_TOKENS_MAX``; more is cut to the
maximum (``budget-capped``), anything else is ignored (``invalid-budget``) and the configured
``MEMPROXY_MEMORY_BLOCK_TOKENS`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import Headers

Mode = Literal["on", "read", "write", "off"]
MODES: tuple[Mode, ...] = ("on", "read", "write", "off")
MODE_HEADER = "x-memory"
BUDGET_HEADER = "x-memory-budget"


@dataclass(frozen=True, slots=True)
class Choice:
    """A request's mode and block budget, with the reasons a header was not taken as sent."""

    mode: Mode = "on"
    budget: int = 1000
    reasons: tuple[str, ...] = ()

    @property
    def recalls(self) -> bool:
        return self.mode in ("on", "read") and self.budget > 0

    @property
    def captures(self) -> bool:
        return self.mode in ("on", "write")


def mode_of(headers: Headers) -> tuple[Mode, str | None]:
    """The request's mode, and ``invalid-mode`` when its header is no mode (memory then off)."""
    given = headers.get(MODE_HEADER)
    if given is None:
        return "on", None
    value = given.strip().lower()
    for mode in MODES:
        if value == mode:
            return mode, None
    return "off", "invalid-mode"


def budget_of(headers: Headers, default: int, maximum: int) -> tuple[int, str | None]:
    """The block budget for the request, and why the header was not taken as sent, if it was not."""
    given = headers.get(BUDGET_HEADER)
    default = min(default, maximum)
    if given is None:
        return default, None
    value = given.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return default, "invalid-budget"
    tokens = int(value)
    return (maximum, "budget-capped") if tokens > maximum else (tokens, None)


def choose(headers: Headers, default_budget: int, max_budget: int) -> Choice:
    """What ``headers`` ask of memory for one request."""
    mode, mode_problem = mode_of(headers)
    budget, budget_problem = budget_of(headers, default_budget, max_budget)
    reasons = tuple(reason for reason in (mode_problem, budget_problem) if reason is not None)
    return Choice(mode, budget, reasons)
