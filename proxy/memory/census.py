"""What an operator may list without naming a user: tenants, and the pseudonymous owners inside one.

Built from the clear payload fields only (:meth:`~proxy.memory.store.MemoryStore.scan_clear`): a
tenant, an owner's pseudonym (``s_...``, the subject id itself is stored nowhere), kinds, dates,
state and access counts. No key is read and no text is opened here; opening an owner's memories
takes its subject id, through :meth:`~proxy.memory.service.MemoryService.of` as everywhere else.

A scan reads at most ``max_points`` points; :attr:`Census.complete` says whether it saw them all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from .models import as_utc, utcnow
from .store import ClearPoint, MemoryStore

MAX_POINTS = 20_000
"""Points one listing reads at most (a page of the explorer must stay quick on a large store)."""
BATCH = 512

T = TypeVar("T")


@dataclass
class OwnerSummary:
    """One pseudonymous owner of a tenant, counted from clear fields."""

    owner_hash: str
    live: int = 0
    tombstones: int = 0
    expired: int = 0
    """Expired, not yet removed by the janitor (never recalled or listed)."""
    kinds: Counter[str] = field(default_factory=Counter)
    accesses: int = 0
    last_updated: datetime | None = None

    def add(self, point: ClearPoint, now: datetime) -> None:
        if point.deleted:
            self.tombstones += 1
        elif point.expires_at is not None and point.expires_at <= now:
            self.expired += 1
        else:
            self.live += 1
            self.kinds[point.kind] += 1
        self.accesses += point.access_count
        if point.updated_at is not None and (self.last_updated is None or point.updated_at > self.last_updated):
            self.last_updated = point.updated_at


@dataclass
class TenantSummary:
    tenant: str
    owners: int = 0
    live: int = 0
    tombstones: int = 0
    expired: int = 0


@dataclass
class Census(Generic[T]):
    items: list[T]
    scanned: int
    complete: bool


async def _scan(store: MemoryStore, tenant: str | None, max_points: int) -> tuple[list[ClearPoint], bool]:
    points: list[ClearPoint] = []
    cursor: str | None = None
    while len(points) < max_points:
        page, cursor = await store.scan_clear(tenant, limit=min(BATCH, max_points - len(points)), cursor=cursor)
        points.extend(page)
        if cursor is None:
            return points, True
    return points, False


def _by_owner(points: list[ClearPoint], now: datetime) -> dict[tuple[str, str], OwnerSummary]:
    owners: dict[tuple[str, str], OwnerSummary] = {}
    for point in points:
        key = (point.tenant, point.owner_hash)
        summary = owners.get(key)
        if summary is None:
            summary = owners[key] = OwnerSummary(point.owner_hash)
        summary.add(point, now)
    return owners


async def owners(
    store: MemoryStore, tenant: str, *, now: datetime | None = None, max_points: int = MAX_POINTS
) -> Census[OwnerSummary]:
    """The owners of ``tenant`` (by pseudonym), most recently updated first."""
    points, complete = await _scan(store, tenant, max_points)
    found = [s for (t, _), s in _by_owner(points, as_utc(now or utcnow())).items() if t == tenant]
    found.sort(key=lambda s: (s.last_updated is not None, s.last_updated), reverse=True)
    return Census(found, len(points), complete)


async def tenants(
    store: MemoryStore, *, now: datetime | None = None, max_points: int = MAX_POINTS
) -> Census[TenantSummary]:
    """Every tenant holding memories, with its owner and memory counts, by tenant."""
    points, complete = await _scan(store, None, max_points)
    out: dict[str, TenantSummary] = {}
    for (tenant, _), owner in _by_owner(points, as_utc(now or utcnow())).items():
        summary = out.setdefault(tenant, TenantSummary(tenant))
        summary.owners += 1
        summary.live += owner.live
        summary.tombstones += owner.tombstones
        summary.expired += owner.expired
    return Census(sorted(out.values(), key=lambda s: s.tenant), len(points), complete)
