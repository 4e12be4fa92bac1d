"""Operator listings from clear fields (tenants, pseudonymous owners) and amending kind and expiry,
with the real embedding model on both store backends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import owner
from test_memory_service import T0, make_service, svc  # noqa: F401 - the fixtures, on both backends

from proxy.memory import census
from proxy.memory.service import MemoryNotFound, MemoryService


async def test_owners_are_listed_by_pseudonym_per_tenant_with_their_counts(svc: MemoryService) -> None:  # noqa: F811
    alice, bob, eve = owner("acme", "alice@example.com"), owner("acme", "bob"), owner("globex", "eve")
    for text in ("Lives in Lyon", "Has a cat called Miso", "Prefers tea over coffee"):
        await svc.of(alice).remember(text)
    gone, _ = await svc.of(alice).remember("Is moving to Oslo", kind="plan")
    await svc.of(alice).delete(gone.id, "moved")
    await svc.of(alice).remember("Is at the dentist today", kind="temporary", ttl=60, now=T0 - timedelta(hours=1))
    await svc.of(bob).remember("Plays the cello")
    await svc.of(eve).remember("Speaks Finnish")

    listing = await census.owners(svc.store, "acme", now=T0)
    assert listing.complete and listing.scanned == 6
    by_hash = {o.owner_hash: o for o in listing.items}
    assert set(by_hash) == {alice.hash, bob.hash}, "the other tenant's owner is not listed"
    a = by_hash[alice.hash]
    assert (a.live, a.tombstones, a.expired) == (3, 1, 1)
    assert dict(a.kinds) == {"fact": 3}
    rendered = repr(listing)
    assert "alice" not in rendered and "Lyon" not in rendered, "no subject id, no text"

    tenants = await census.tenants(svc.store, now=T0)
    assert [(t.tenant, t.owners, t.live) for t in tenants.items] == [("acme", 2, 4), ("globex", 1, 1)]

    capped = await census.owners(svc.store, "acme", now=T0, max_points=2)
    assert not capped.complete and capped.scanned == 2


async def test_amend_changes_kind_and_expiry_and_keeps_the_text(svc: MemoryService) -> None:  # noqa: F811
    mine = svc.of(owner("acme", "alice"))
    memory, _ = await mine.remember("Is in Rome this week", kind="fact")
    amended = await mine.amend(memory.id, kind="temporary", ttl=timedelta(hours=2))
    assert (amended.kind, amended.expires_at) == ("temporary", T0 + timedelta(hours=2))
    stored = await mine.get(memory.id)
    assert stored is not None and (stored.kind, stored.expires_at, stored.text) == (
        "temporary",
        T0 + timedelta(hours=2),
        "Is in Rome this week",
    )
    assert [s.memory.id for s in await mine.recall("Rome")] == [memory.id], "still recalled"

    forever = await mine.amend(memory.id, never_expires=True)
    assert forever.expires_at is None and (await mine.get(memory.id)).expires_at is None

    await mine.amend(memory.id, ttl=timedelta(seconds=1), now=T0 - timedelta(hours=1))
    assert await mine.get(memory.id) is None, "expired at the service's now"
    with pytest.raises(MemoryNotFound):
        await mine.amend(memory.id, kind="fact")
    with pytest.raises(ValueError):
        await svc.of(owner("acme", "alice")).amend(memory.id, kind="Not A Kind")
    with pytest.raises(MemoryNotFound):
        await svc.of(owner("acme", "bob")).amend(memory.id, never_expires=True)
