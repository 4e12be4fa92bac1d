"""Per-owner data keys: created once, wrapped at rest under the server secret, cached, destroyed on erasure."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from conftest import owner

from proxy.memory.models import normalize_text
from proxy.memory.sealing import KEYS_NS, MemoryKeyStore, Sealer, SealError, StateKeyStore
from proxy.state import State

ALICE, BOB = owner("tenant-a", "alice@example.com"), owner("tenant-a", "bob@example.com")


async def test_a_key_is_created_once_even_by_racing_writers_and_read_back_unwrapped(state: State) -> None:
    sealers = [Sealer(StateKeyStore(lambda: state), b"server-secret") for _ in range(4)]  # four replicas
    keys = await asyncio.gather(*(s.key(ALICE, create=True) for s in sealers for _ in range(3)))
    assert len({k.kid for k in keys}) == 1 and len({k.material for k in keys}) == 1
    assert await sealers[0].key(BOB) is None  # reading never creates
    stored = json.dumps(await state.get(KEYS_NS, f"{ALICE.tenant}:{ALICE.hash}"))
    assert "alice" not in stored and keys[0].material.hex() not in stored  # wrapped, no user id
    fresh = Sealer(StateKeyStore(lambda: state), b"server-secret")
    assert (await fresh.key(ALICE)).material == keys[0].material
    with pytest.raises(SealError, match="MEMPROXY_SECRET"):
        await Sealer(StateKeyStore(lambda: state), b"another-secret").key(ALICE)


async def test_sealed_fields_open_only_for_their_point_and_owner() -> None:
    sealer = Sealer.ephemeral()
    key = await sealer.key(ALICE, create=True)
    aad = Sealer.payload_aad(ALICE.tenant, ALICE.hash, "point-1")
    token = key.seal({"text": "my PIN is 4471"}, aad)
    assert "4471" not in token and key.open(token, aad) == {"text": "my PIN is 4471"}
    with pytest.raises(SealError):
        key.open(token, Sealer.payload_aad(ALICE.tenant, ALICE.hash, "point-2"))  # moved to another point
    with pytest.raises(SealError):
        key.open(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), aad)  # altered
    bobs = await sealer.key(BOB, create=True)
    with pytest.raises(SealError):
        bobs.open(token, aad)


async def test_the_content_hash_is_keyed_per_owner() -> None:
    sealer = Sealer.ephemeral()
    a, b = await sealer.key(ALICE, create=True), await sealer.key(BOB, create=True)
    assert a.content_hash("I like tea.") == a.content_hash("i like  TEA")  # normalized
    assert a.content_hash("I like tea") != b.content_hash("I like tea")
    assert a.content_hash("I like tea") != hashlib.sha256(normalize_text("I like tea").encode()).hexdigest()


async def test_destroy_forgets_the_key_and_the_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    keys = MemoryKeyStore()
    sealer = Sealer(keys, b"s", cache_size=2, cache_ttl=10, clock=lambda: now[0])
    first = await sealer.key(ALICE, create=True)
    assert await sealer.destroy(ALICE) is True and await sealer.key(ALICE) is None
    assert (await sealer.key(ALICE, create=True)).kid != first.kid  # a new key, never the old one
    for subject in ("c", "d", "e"):
        await sealer.key(owner("tenant-a", subject), create=True)
    assert len(sealer._cache) == 2
    # another replica destroyed ALICE's key: this one stops using its cached copy after the TTL
    await sealer.key(ALICE)
    keys.records.clear()
    assert await sealer.key(ALICE) is not None
    now[0] += 11
    assert await sealer.key(ALICE) is None
