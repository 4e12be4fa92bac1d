"""MemoryService with the real offline embedding model, on both store backends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from conftest import owner
from qdrant_client import AsyncQdrantClient

from proxy.config import Settings
from proxy.memory.factory import create_memory_service
from proxy.memory.sealing import Sealer
from proxy.memory.service import MemoryNotFound, MemoryService
from proxy.memory.store import DimensionMismatchError
from proxy.memory.store_edge import EdgeStore
from proxy.memory.store_qdrant import QdrantStore

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
KEY_STORES: dict = {}


def sealing(data_dir) -> dict:
    """What the factory needs to seal: the tests' secret and one key store per data directory (a
    service reopened on the same directory finds its keys, as the proxy's state store would)."""
    from conftest import TEST_SECRET

    from proxy.memory.sealing import MemoryKeyStore

    return {"secret": TEST_SECRET, "keys": KEY_STORES.setdefault(str(data_dir), MemoryKeyStore())}


TEN, SUB = "tenant-a", "alice"

BACKGROUND = [
    "User lives in Berlin",
    "User works as a nurse",
    "User's daughter is called Mia",
    "User is learning Portuguese",
    "User prefers window seats on flights",
    "User is allergic to penicillin",
]


@pytest.fixture(params=["edge", "qdrant"])
async def make_service(request, tmp_path, local_embedder):
    made: list[MemoryService] = []

    async def make(**overrides) -> MemoryService:
        overrides.setdefault("memory_access_flush_seconds", 3600)  # tests flush explicitly
        settings = Settings(data_dir=tmp_path, **overrides)
        if request.param == "edge":
            store = EdgeStore(tmp_path / f"memories-{len(made)}", dim=local_embedder.dim, sealer=Sealer.ephemeral())
        else:
            client = AsyncQdrantClient(location=":memory:")
            store = QdrantStore(
                client, collection="memories", dim=local_embedder.dim, sealer=Sealer.ephemeral(), owns_client=True
            )
        service = MemoryService(store, local_embedder, settings, clock=lambda: T0, owns_store=True)
        await service.start()
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


@pytest.fixture
async def svc(make_service) -> MemoryService:
    return await make_service()


async def seed(svc: MemoryService, tenant: str = TEN, subject: str = SUB, texts=BACKGROUND) -> None:
    for text in texts:
        await svc.of(owner(tenant, subject)).remember(text)


def texts(scored) -> list[str]:
    return [s.memory.text for s in scored]


# --- remember ----------------------------------------------------------------------------------------


async def test_remember_dedupes_exact_and_near_duplicates(svc):
    first, action = await svc.of(owner(TEN, SUB)).remember("User likes green tea.", kind="preference")
    assert action == "created" and first.kind == "preference" and first.created_at == T0
    again, action = await svc.of(owner(TEN, SUB)).remember("  user likes GREEN tea ")
    assert (again.id, action) == (first.id, "duplicate")
    assert again.access_count == 1 and again.last_accessed_at == T0

    colour, _ = await svc.of(owner(TEN, SUB)).remember("My favourite colour is blue")
    near, action = await svc.of(owner(TEN, SUB)).remember("My favorite color is blue.")
    assert (near.id, action) == (colour.id, "near_duplicate")

    # similar wording, opposite meaning: stays a separate memory (cosine ~0.82 < 0.92)
    window, _ = await svc.of(owner(TEN, SUB)).remember("I prefer window seats on flights")
    aisle, action = await svc.of(owner(TEN, SUB)).remember("I prefer aisle seats on flights")
    assert action == "created" and aisle.id != window.id

    assert await svc.of(owner(TEN, SUB)).count() == 4
    await svc.flush()
    assert (await svc.of(owner(TEN, SUB)).get(first.id)).access_count == 1  # the duplicate counted as a use


async def test_same_text_in_another_scope_is_not_a_duplicate(svc):
    a, _ = await svc.of(owner(TEN, SUB)).remember("User likes green tea")
    b, action = await svc.of(owner("tenant-b", SUB)).remember("User likes green tea")
    c, action2 = await svc.of(owner(TEN, "bob")).remember("User likes green tea")
    assert action == action2 == "created" and len({a.id, b.id, c.id}) == 3


async def test_near_duplicate_threshold_is_configurable(make_service):
    strict = await make_service(memory_near_duplicate=0.99)
    await strict.of(owner(TEN, SUB)).remember("My favourite colour is blue")
    _, action = await strict.of(owner(TEN, SUB)).remember("My favorite color is blue.")
    assert action == "created"


async def test_ttl_defaults_per_kind_and_explicit_ttl_wins(svc):
    temp, _ = await svc.of(owner(TEN, SUB)).remember("User is in Lisbon this week", kind="temporary")
    fact, _ = await svc.of(owner(TEN, SUB)).remember("User was born in Porto", kind="fact")
    short, _ = await svc.of(owner(TEN, SUB)).remember(
        "User has a dentist appointment today", kind="temporary", ttl=3600
    )
    plan, _ = await svc.of(owner(TEN, SUB)).remember(
        "User plans to move to Madrid", kind="plan", ttl=timedelta(days=90)
    )
    assert temp.expires_at == T0 + timedelta(days=7)
    assert fact.expires_at is None
    assert short.expires_at == T0 + timedelta(hours=1)
    assert plan.expires_at == T0 + timedelta(days=90)
    with pytest.raises(ValueError):
        await svc.of(owner(TEN, SUB)).remember("bad ttl", ttl=-5)


async def test_repeating_a_temporary_fact_extends_its_life(svc):
    m, _ = await svc.of(owner(TEN, SUB)).remember("User is in Lisbon this week", kind="temporary")
    later = T0 + timedelta(days=5)
    again, action = await svc.of(owner(TEN, SUB)).remember("User is in Lisbon this week", kind="temporary", now=later)
    assert action == "duplicate" and again.expires_at == later + timedelta(days=7)
    assert (await svc.of(owner(TEN, SUB)).get(m.id, now=later)).expires_at == later + timedelta(days=7)


async def test_invalid_input_is_refused(svc):
    with pytest.raises(ValueError):
        await svc.of(owner(TEN, SUB)).remember("   ")
    with pytest.raises(ValueError):
        await svc.of(owner(TEN, SUB)).remember("x" * 5000)
    with pytest.raises(ValueError):
        await svc.of(owner("", SUB)).remember("no tenant")
    with pytest.raises(ValueError):
        await svc.of(owner(TEN, "")).remember("no subject")
    with pytest.raises(ValueError):
        await svc.of(owner(TEN, SUB)).remember("bad kind", kind="Not A Kind!")
    # ids that are not UUIDs name nothing
    assert await svc.of(owner(TEN, SUB)).get("1 OR 1=1") is None
    with pytest.raises(MemoryNotFound):
        await svc.of(owner(TEN, SUB)).delete("not-an-id")
    with pytest.raises(MemoryNotFound):
        await svc.of(owner(TEN, SUB)).update("", "text")


# --- recall ------------------------------------------------------------------------------------------


async def test_recall_finds_a_keyword_only_match(svc):
    await seed(svc)
    part, _ = await svc.of(owner(TEN, SUB)).remember("User ordered replacement part ZQX-7781 for the dishwasher")
    (top, *_) = await svc.of(owner(TEN, SUB)).recall("Any news on ZQX-7781?")
    assert top.memory.id == part.id
    assert top.lexical > 0.6 and top.similarity == top.lexical > top.semantic


async def test_recall_finds_a_paraphrase_with_no_shared_words(svc):
    await seed(svc)
    vegan, _ = await svc.of(owner(TEN, SUB)).remember("User is vegan")
    (top, *_) = await svc.of(owner(TEN, SUB)).recall("I don't eat any animal products")
    assert top.memory.id == vegan.id
    assert top.lexical == 0.0 and top.semantic > 0.3


async def test_recall_reports_every_confidence_term(svc):
    await seed(svc)
    results = await svc.of(owner(TEN, SUB)).recall("Where do I live?", top_k=3, min_confidence=0.0)
    assert results and texts(results)[0] == "User lives in Berlin"
    for r in results:
        for term in (r.confidence, r.similarity, r.semantic, r.lexical, r.recency, r.frequency):
            assert 0.0 <= term <= 1.0
        assert r.recency == pytest.approx(1.0)  # just stored, as of T0
        assert r.frequency == 0.0
    assert [r.confidence for r in results] == sorted((r.confidence for r in results), reverse=True)


async def test_unrelated_memories_do_not_surface_however_recent(svc):
    await seed(svc)
    assert (
        await svc.of(owner(TEN, SUB)).recall("What is the capital of Australia's stock index ticker?", min_confidence=0)
        == []
    )


async def test_top_k_and_min_confidence(svc):
    await seed(svc)
    q = "Tell me about my family, job and where I live"
    everything = await svc.of(owner(TEN, SUB)).recall(q, top_k=10, min_confidence=0, min_similarity=0)
    assert len(await svc.of(owner(TEN, SUB)).recall(q, top_k=2, min_confidence=0, min_similarity=0)) == 2
    cut = everything[len(everything) // 2].confidence
    above = await svc.of(owner(TEN, SUB)).recall(q, top_k=10, min_confidence=cut, min_similarity=0)
    assert all(r.confidence >= cut for r in above) and 0 < len(above) < len(everything)


async def test_recency_lowers_confidence_but_never_the_relevance_order(make_service):
    """An old fact keeps its place among relevant ones (bench locomo: re-sorting by confidence lost
    half the evidence); its age shows in its confidence, and a confidence floor can drop it."""
    q = "Which sport do I do?"
    svc = await make_service()
    await svc.of(owner(TEN, SUB)).remember("User plays tennis on Saturdays", now=T0 - timedelta(days=200))
    await svc.of(owner(TEN, SUB)).remember("User practises judo")
    results = await svc.of(owner(TEN, SUB)).recall(q, min_confidence=0)
    assert texts(results) == ["User plays tennis on Saturdays", "User practises judo"]
    old, fresh = results
    assert old.recency < 0.05 and fresh.recency > 0.99
    assert old.similarity > fresh.similarity and old.confidence < fresh.confidence
    floor = (old.confidence + fresh.confidence) / 2
    assert texts(await svc.of(owner(TEN, SUB)).recall(q, min_confidence=floor)) == ["User practises judo"]


async def test_frequent_recall_raises_confidence(svc):
    await svc.of(owner(TEN, SUB)).remember("User plays tennis on Saturdays")
    judo, _ = await svc.of(owner(TEN, SUB)).remember("User practises judo")
    q = "Which sport do I do?"
    before = {r.memory.text: r for r in await svc.of(owner(TEN, SUB)).recall(q, min_confidence=0)}
    for _ in range(20):
        (hit,) = await svc.of(owner(TEN, SUB)).recall("judo", top_k=1)
        assert hit.memory.id == judo.id
    await svc.flush()
    after = {r.memory.text: r for r in await svc.of(owner(TEN, SUB)).recall(q, min_confidence=0)}
    assert after["User practises judo"].frequency > 0.9 and after["User plays tennis on Saturdays"].frequency < 0.3
    assert after["User practises judo"].confidence > before["User practises judo"].confidence


async def test_recall_counts_accesses_in_the_background(svc):
    m, _ = await svc.of(owner(TEN, SUB)).remember("User's dog is called Rex")
    later = T0 + timedelta(hours=3)
    for _ in range(3):
        assert texts(await svc.of(owner(TEN, SUB)).recall("What is my dog's name?", now=later)) == [m.text]
    # not written yet: recall does not wait for the bookkeeping
    assert (await svc.of(owner(TEN, SUB)).get(m.id)).access_count == 0
    await svc.flush()
    stored = await svc.of(owner(TEN, SUB)).get(m.id)
    assert stored.access_count == 3 and stored.last_accessed_at == later


async def test_background_flusher_writes_without_being_asked(make_service):
    svc = await make_service(memory_access_flush_seconds=0.05)
    m, _ = await svc.of(owner(TEN, SUB)).remember("User's dog is called Rex")
    await svc.of(owner(TEN, SUB)).recall("What is my dog's name?")
    for _ in range(100):
        if (await svc.of(owner(TEN, SUB)).get(m.id)).access_count == 1:
            break
        await asyncio.sleep(0.02)
    assert (await svc.of(owner(TEN, SUB)).get(m.id)).access_count == 1


# --- expiry, update, delete ----------------------------------------------------------------------------


async def test_expired_memory_is_never_recalled_and_the_janitor_reports_it(svc):
    await seed(svc)
    trip, _ = await svc.of(owner(TEN, SUB)).remember("User is in Lisbon this week", kind="temporary")
    other, _ = await svc.of(owner("tenant-b", "bob")).remember(
        "User is in Rome until Friday", kind="temporary", ttl=86400
    )
    q = "Where am I travelling at the moment?"
    assert trip.id in [r.memory.id for r in await svc.of(owner(TEN, SUB)).recall(q, now=T0 + timedelta(days=6))]

    after = T0 + timedelta(days=7, seconds=1)
    assert trip.id not in [r.memory.id for r in await svc.of(owner(TEN, SUB)).recall(q, now=after)]
    assert await svc.of(owner(TEN, SUB)).get(trip.id, now=after) is None
    assert trip.id not in [m.id for m in (await svc.of(owner(TEN, SUB)).list(now=after)).memories]

    removed = await svc.expire(after)
    assert {(m.id, m.tenant, m.owner_hash) for m in removed} == {
        (trip.id, TEN, owner(TEN, SUB).hash),
        (other.id, "tenant-b", owner("tenant-b", "bob").hash),
    }
    assert trip.id not in [m.id for m in await svc.of(owner(TEN, SUB)).export()]  # gone for good
    assert await svc.of(owner(TEN, SUB)).count(now=after) == len(BACKGROUND)
    assert await svc.expire(after) == []


async def test_update_keeps_history_and_reembeds(svc):
    await seed(svc)
    m, _ = await svc.of(owner(TEN, SUB)).remember("User lives in Hamburg")
    later = T0 + timedelta(days=2)
    updated = await svc.of(owner(TEN, SUB)).update(
        m.id, "User moved to Munich", reason="user said they moved", now=later
    )
    assert updated.id == m.id and updated.text == "User moved to Munich" and updated.updated_at == later
    assert [(h.text, h.changed_at, h.reason) for h in updated.history] == [
        ("User lives in Hamburg", later, "user said they moved")
    ]
    assert (await svc.of(owner(TEN, SUB)).get(m.id)).history == updated.history
    (top, *_) = await svc.of(owner(TEN, SUB)).recall("Munich", now=later)
    assert top.memory.id == m.id and top.memory.text == "User moved to Munich"
    # the stored vector is the new text's: it is closer to "Munich" than to "Hamburg"
    by_old = {r.memory.id: r for r in await svc.of(owner(TEN, SUB)).recall("Hamburg", now=later, min_similarity=0)}
    assert top.semantic > by_old[m.id].semantic + 0.2
    # a second update appends
    again = await svc.of(owner(TEN, SUB)).update(m.id, "User moved to Vienna", now=later + timedelta(days=1))
    assert [h.text for h in again.history] == ["User lives in Hamburg", "User moved to Munich"]


async def test_soft_delete_hides_but_export_keeps_the_tombstone(svc):
    m, _ = await svc.of(owner(TEN, SUB)).remember("User's dog is called Rex")
    tomb = await svc.of(owner(TEN, SUB)).delete(m.id, reason="user asked to forget")
    assert tomb.deleted_reason == "user asked to forget" and tomb.deleted_at == T0
    assert await svc.of(owner(TEN, SUB)).recall("What is my dog's name?", min_confidence=0) == []
    assert (await svc.of(owner(TEN, SUB)).list()).memories == []
    assert await svc.of(owner(TEN, SUB)).get(m.id) is None
    assert (await svc.of(owner(TEN, SUB)).get(m.id, include_deleted=True)).deleted_reason == "user asked to forget"
    assert [x.id for x in (await svc.of(owner(TEN, SUB)).list(include_deleted=True)).memories] == [m.id]
    (exported,) = await svc.of(owner(TEN, SUB)).export()
    assert exported.deleted and exported.text == m.text
    with pytest.raises(MemoryNotFound):
        await svc.of(owner(TEN, SUB)).delete(m.id)
    with pytest.raises(MemoryNotFound):
        await svc.of(owner(TEN, SUB)).update(m.id, "User's dog is called Max")
    # saying it again later creates a fresh memory rather than reviving the tombstone
    fresh, action = await svc.of(owner(TEN, SUB)).remember("User's dog is called Rex")
    assert action == "created" and fresh.id != m.id


async def test_erase_subject_is_hard_and_counts_everything(svc):
    await seed(svc)
    m, _ = await svc.of(owner(TEN, SUB)).remember("User's dog is called Rex")
    await svc.of(owner(TEN, SUB)).delete(m.id)
    await seed(svc, subject="bob", texts=["Bob likes chess"])
    assert await svc.of(owner(TEN, SUB)).erase() == len(BACKGROUND) + 1
    assert await svc.of(owner(TEN, SUB)).export() == []
    assert await svc.of(owner(TEN, SUB)).erase() == 0
    assert texts(await svc.of(owner(TEN, "bob")).recall("chess")) == ["Bob likes chess"]


async def test_list_pages_through_everything(svc):
    await seed(svc)
    seen, cursor = [], None
    while True:
        page = await svc.of(owner(TEN, SUB)).list(cursor=cursor, limit=4)
        seen += [m.text for m in page.memories]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(BACKGROUND)


# --- isolation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("intruder", [("tenant-b", SUB), (TEN, "bob")], ids=["other-tenant", "other-subject"])
async def test_another_tenant_or_subject_cannot_reach_a_memory_even_with_its_id(svc, intruder):
    secret, _ = await svc.of(owner(TEN, SUB)).remember("User's bank PIN hint is the cat's birthday")
    await svc.of(owner(*intruder)).remember("Intruder's own memory about cats")
    t, s = intruder
    assert await svc.of(owner(t, s)).get(secret.id, include_deleted=True) is None
    assert secret.id not in [m.id for m in (await svc.of(owner(t, s)).list(include_deleted=True)).memories]
    assert secret.id not in [m.id for m in await svc.of(owner(t, s)).export()]
    assert secret.id not in [
        r.memory.id for r in await svc.of(owner(t, s)).recall("bank PIN hint cat birthday", min_confidence=0)
    ]
    with pytest.raises(MemoryNotFound):
        await svc.of(owner(t, s)).delete(secret.id, reason="attack")
    with pytest.raises(MemoryNotFound):
        await svc.of(owner(t, s)).update(secret.id, "overwritten")
    assert await svc.of(owner(t, s)).erase() == 1  # only the intruder's own memory
    # the owner still sees it, unchanged
    kept = await svc.of(owner(TEN, SUB)).get(secret.id)
    assert kept.text == secret.text and not kept.deleted
    assert texts(await svc.of(owner(TEN, SUB)).recall("bank PIN hint"))[0] == secret.text


# --- assistants ------------------------------------------------------------------------------------


async def _assistant_memories(svc):
    await svc.of(owner(TEN, SUB)).remember("User's favourite pizza is margherita", assistant_id="asst_food")
    await svc.of(owner(TEN, SUB)).remember("User's favourite pizza topping is pineapple", assistant_id="asst_travel")
    await svc.of(owner(TEN, SUB)).remember("User's favourite pizzeria is in Naples")


async def test_assistants_share_a_users_memories_by_default(make_service):
    svc = await make_service()
    await _assistant_memories(svc)
    got = await svc.of(owner(TEN, SUB)).recall("favourite pizza", assistant_id="asst_food", min_confidence=0)
    assert len(got) == 3


async def test_per_assistant_restriction(make_service):
    svc = await make_service(memory_per_assistant=True)
    await _assistant_memories(svc)
    got = await svc.of(owner(TEN, SUB)).recall("favourite pizza", assistant_id="asst_food", min_confidence=0)
    assert sorted(texts(got)) == ["User's favourite pizza is margherita", "User's favourite pizzeria is in Naples"]
    assert {r.memory.assistant_id for r in got} == {"asst_food", None}
    # without an assistant (e.g. chat completions) nothing is restricted
    assert len(await svc.of(owner(TEN, SUB)).recall("favourite pizza", min_confidence=0)) == 3
    # the same sentence told to another assistant is its own memory when restricted
    _, action = await svc.of(owner(TEN, SUB)).remember(
        "User's favourite pizza is margherita", assistant_id="asst_travel"
    )
    assert action == "created"


# --- start-up and persistence --------------------------------------------------------------------------


async def test_startup_refuses_a_collection_of_another_dimension(tmp_path, local_embedder):
    settings = Settings(data_dir=tmp_path, collection="mem")
    old = EdgeStore(tmp_path / "qdrant" / "mem", dim=8, sealer=Sealer.ephemeral())
    await old.start()
    await old.close()
    with pytest.raises(DimensionMismatchError, match=r"size 8.*size 384"):
        await create_memory_service(settings, embedder=local_embedder, **sealing(tmp_path))


async def test_factory_service_persists_across_restarts(tmp_path, local_embedder):
    settings = Settings(data_dir=tmp_path, memory_access_flush_seconds=3600)
    svc = await create_memory_service(settings, embedder=local_embedder, **sealing(tmp_path))
    m, _ = await svc.of(owner(TEN, SUB)).remember("User's car is a red Fiat 500")
    await svc.of(owner(TEN, SUB)).recall("What car do I drive?")
    await svc.aclose()  # flushes pending access counts and closes the shard

    svc = await create_memory_service(settings, embedder=local_embedder, **sealing(tmp_path))
    try:
        (top,) = await svc.of(owner(TEN, SUB)).recall("What car do I drive?")
        assert top.memory.id == m.id and top.memory.access_count == 1
        assert (tmp_path / "qdrant" / settings.collection).is_dir()
    finally:
        await svc.aclose()
