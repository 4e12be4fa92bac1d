"""The key cache: each tenant's upstream API key from its live requests, in process memory only.

Extraction calls need an upstream key and job payloads never carry one (see
:mod:`proxy.learn.extract`): without ``MEMPROXY_LLM_API_KEY`` the worker uses the key the tenant's
own latest request brought, held here and nowhere else.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class KeyRing:
    """tenant -> the latest upstream API key seen on a live request of that tenant.

    In process memory only (never written anywhere, never in ``repr``), each entry forgotten ``ttl``
    seconds after its last refresh, at most ``max_tenants`` entries (least recently refreshed go first).
    """

    def __init__(self, ttl: float = 3600.0, *, max_tenants: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_tenants = max_tenants
        self.clock = clock
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._listeners: list[Callable[[str], None]] = []

    def on_arrival(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(tenant)`` whenever a tenant without a key here gets one (jobs waiting for it may run)."""
        self._listeners.append(listener)

    def remember(self, tenant: str | None, key: str | None) -> None:
        """Called by the request hooks with the tenant's credential; refreshes its expiry."""
        if not tenant or not key or self.ttl <= 0:
            return
        arrived = self.get(tenant) is None
        self._keys[tenant] = (key, self.clock() + self.ttl)
        self._keys.move_to_end(tenant)
        while len(self._keys) > self.max_tenants:
            self._keys.popitem(last=False)
        if arrived:
            for listener in self._listeners:
                listener(tenant)

    def get(self, tenant: str) -> str | None:
        entry = self._keys.get(tenant)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._keys[tenant]
            return None
        return entry[0]

    def forget(self, tenant: str) -> None:
        self._keys.pop(tenant, None)

    def __len__(self) -> int:
        now = self.clock()
        for tenant in [t for t, (_, until) in self._keys.items() if until <= now]:
            del self._keys[tenant]
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing({len(self)} tenants, ttl={self.ttl:g}s)"
