"""Failed explorer logins per client address: a guess at the admin token costs a wait after a few.

Counted in this process (each replica counts its own); the address is the one uvicorn reports
(the client's, or the forwarded one behind a trusted proxy). Nothing about the attempt but its time
is kept, and never the token typed.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

MAX_FAILURES = 10
"""Failed logins one address may make within :data:`WINDOW`; the next waits for the oldest to age out."""
WINDOW = 300.0
MAX_ADDRESSES = 10_000
"""Addresses remembered at most (the least recently failing is forgotten first): a bounded table."""


class LoginThrottle:
    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.max_failures, self.window = max_failures, window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """Seconds ``address`` must wait before its next try (0: it may try now)."""
        now = time.monotonic() if now is None else now
        failures = self._recent(address, now)
        if len(failures) < self.max_failures:
            return 0
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures = self._recent(address, now)
        failures.append(now)
        self._failures[address] = failures
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures
