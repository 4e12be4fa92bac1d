"""Contract tests of the memory store, run against both backends.

Vectors here are small hand-made ones (no embedding model): the tests are about what the store
keeps, finds and refuses, identically on Qdrant Edge and on qdrant-client (local mode).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import qdrant_edge as qe
from conftest import owner
from qdrant_client import AsyncQdrantClient

from proxy.memory.models import HistoryEntry, Memory, Source
from proxy.memory.sealing import Sealer
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store import (
    CUT_MARGIN,
    DimensionMismatchError,
    MemoryPoint,
    access_payload,
)
from proxy.memory.store_edge import EdgeStore
from proxy.memory.store_qdrant import QdrantStore
from proxy.owner import Owner

DIM = 8
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
A = owner("tenant-a", "alice")
B = owner("tenant-b", "alice")  # same subject name, other tenant
A_BOB = owner("tenant-a", "bob")  # same tenant, other subject
BM25 = Bm25Encoder()
SEALER = Sealer.ephemeral()  # one for the module: a store reopened on the same files finds its keys


def vec(axis: int, wobble: float = 0.0) -> list[float]:
    v = np.zeros(DIM, dtype=np.float32)
    v[axis % DIM] = 1.0
    v[(axis + 1) % DIM] = wobble
    return v.tolist()


def mem(scope: Owner, text: str, **kw) -> Memory:
    kw.setdefault("created_at", T0)
    kw.setdefault("updated_at", T0)
    return Memory(tenant=scope.tenant, subject=scope.subject, text=text, **kw)


def point(memory: Memory, axis: int = 0, wobble: float = 0.0) -> MemoryPoint:
    return MemoryPoint(memory, vec(axis, wobble), BM25.document(memory.text))


async def open_store(kind: str, tmp_path, dim: int = DIM, client: AsyncQdrantClient | None = None):
    if kind == "edge":
        store = EdgeStore(tmp_path / "memories", dim=dim, sealer=SEALER)
    else:
        client = client or AsyncQdrantClient(location=":memory:")
        store = QdrantStore(client, collection="memories", dim=dim, sealer=SEALER)
    await store.start()
    return store


@pytest.fixture(params=["edge", "qdrant"])
async def store(request, tmp_path):
    s = await open_store(request.param, tmp_path)
    yield s
    await s.close()
    if isinstance(s, QdrantStore):
        await s.client.close()


async def test_roundtrip_keeps_every_field(store):
    m = mem(
        A,
        "User's dog is called Rex",
        kind="identity",
        expires_at=T0 + timedelta(days=3),
        access_count=4,
        last_accessed_at=T0 + timedelta(hours=1),
        source=Source(thread_id="thread_1", run_id="run_1", message_ids=["msg_1", "msg_2"], assistant_id="asst_1"),
        assistant_id="asst_1",
        history=[HistoryEntry(text="User's dog is Rex", changed_at=T0, reason="typo")],
        metadata={"lang": "en", "n": 3},
    )
    await store.upsert(A, [point(m)])
    (got,) = await store.get(A, [m.id])
    assert got == m
    assert got.expires_at.tzinfo is not None


async def test_scope_is_mandatory_and_checked(store):
    with pytest.raises(ValueError):
        owner("", "alice")
    with pytest.raises(ValueError):
        owner("tenant-a", "  ")
    with pytest.raises(TypeError):
        await store.get(("tenant-a", "alice"), [str(uuid.uuid4())])  # a tuple is not an Owner
    with pytest.raises(TypeError):
        await store.count("tenant-a")
    for call in (  # even calls that would do nothing check their scope
        store.get("tenant-a", []),
        store.delete("tenant-a", []),
        store.set_payloads("tenant-a", {}),
        store.upsert("tenant-a", []),
    ):
        with pytest.raises(TypeError):
            await call
    m = mem(A, "belongs to alice in tenant a")
    with pytest.raises(ValueError, match="another scope"):
        await store.upsert(B, [point(m)])  # writing A's memory through B's scope
    with pytest.raises(ValueError, match="size"):
        await store.upsert(A, [MemoryPoint(m, [1.0, 0.0], BM25.document(m.text))])
    assert await store.count(A) == 0 and await store.count(B) == 0


@pytest.mark.parametrize("other", [B, A_BOB], ids=["other-tenant", "other-subject"])
async def test_isolation_even_with_the_id(store, other):
    secret = mem(A, "Alice's locker code is 4471")
    await store.upsert(A, [point(secret, axis=1)])
    # the other scope has a memory too, so its queries are not trivially empty
    mine = mem(other, "Something about the other user")
    await store.upsert(other, [point(mine, axis=2)])

    assert await store.get(other, [secret.id]) == []
    assert [m.id for m in (await store.scroll(other, limit=100, include_deleted=True)).memories] == [mine.id]
    assert await store.count(other, include_deleted=True) == 1
    hits = await store.hybrid_query(other, vec(1), BM25.query("locker code 4471"), limit=10, now=T0)
    assert [h.memory.id for h in hits] == [mine.id]
    hits = await store.dense_query(other, vec(1), limit=10, now=T0)
    assert [h.memory.id for h in hits] == [mine.id]
    assert await store.find(other, text=secret.text) == []

    # writes through the other scope do nothing to A's memory
    with pytest.raises(ValueError, match="another scope"):
        await store.rewrite(other, [secret.model_copy(update={"deleted_at": T0, "deleted_reason": "attack"})])
    await store.set_payloads(other, {secret.id: access_payload(999, T0)})
    await store.delete(other, [secret.id])
    assert await store.delete_scope(other) == 1

    (still,) = await store.get(A, [secret.id])
    assert still.text == secret.text and not still.deleted and still.access_count == 0
    assert await store.count(A) == 1


async def test_expired_memories_are_hidden_and_found_by_the_janitor(store):
    live = mem(A, "User is learning Portuguese", expires_at=T0 + timedelta(days=30))
    forever = mem(A, "User is called Alice")
    gone = mem(A, "User is in Lisbon this week", kind="temporary", expires_at=T0 + timedelta(days=7))
    other = mem(B, "User is in Rome this week", kind="temporary", expires_at=T0 + timedelta(days=2))
    await store.upsert(A, [point(live, 0), point(forever, 1), point(gone, 2)])
    await store.upsert(B, [point(other, 2)])
    later = T0 + timedelta(days=8)

    def ids(items):
        return {getattr(i, "memory", i).id for i in items}

    assert ids(await store.hybrid_query(A, vec(2), BM25.query("Lisbon"), limit=10, now=T0)) >= {gone.id}
    assert gone.id not in ids(await store.hybrid_query(A, vec(2), BM25.query("Lisbon"), limit=10, now=later))
    assert gone.id not in ids(await store.dense_query(A, vec(2), limit=10, now=later))
    assert await store.get(A, [gone.id], now=later) == []
    assert ids(await store.get(A, [gone.id])) == {gone.id}  # without `now`, still stored
    assert ids((await store.scroll(A, now=later)).memories) == {live.id, forever.id}
    assert await store.count(A, now=later) == 2

    expired = await store.find_expired(later)
    assert ids(expired) == {gone.id, other.id}  # every tenant: the janitor's view, by pseudonym only
    assert {(e.tenant, e.owner_hash) for e in expired} == {(A.tenant, A.hash), (B.tenant, B.hash)}
    assert ids(await store.find_expired(T0 + timedelta(days=3))) == {other.id}

    # the janitor's delete (by pseudonym), restricted to expired memories, leaves live ones alone
    removed = await store.delete_expired(A.tenant, A.hash, [gone.id, live.id, forever.id], later)
    assert removed == [gone.id]
    assert await store.delete_expired(B.tenant, A.hash, [other.id], later) == []  # B's memory, A's pseudonym
    assert ids(await store.get(A, [gone.id, live.id, forever.id])) == {live.id, forever.id}
    assert ids(await store.find_expired(later)) == {other.id}


async def test_tombstones_are_hidden_unless_asked(store):
    m = mem(A, "User's favourite band is Radiohead")
    await store.upsert(A, [point(m, 3)])
    await store.rewrite(A, [m.model_copy(update={"deleted_at": T0, "deleted_reason": "user asked"})])
    assert await store.hybrid_query(A, vec(3), BM25.query("Radiohead"), limit=5, now=T0) == []
    assert await store.dense_query(A, vec(3), limit=5, now=T0) == []
    assert (await store.scroll(A)).memories == []
    assert await store.get(A, [m.id], include_deleted=False) == []
    assert await store.find(A, text=m.text) == []
    (tomb,) = await store.get(A, [m.id])
    assert tomb.deleted and tomb.deleted_reason == "user asked" and tomb.deleted_at == T0
    assert [x.id for x in (await store.scroll(A, include_deleted=True)).memories] == [m.id]


async def test_hybrid_finds_a_keyword_match_the_dense_vector_misses(store):
    target = mem(A, "Replacement part ZQX-7781 was ordered")
    distractors = [mem(A, f"Unrelated note number {i} about gardening") for i in range(6)]
    # the dense query points at the distractors' axis; only BM25 knows about ZQX-7781
    await store.upsert(
        A, [point(target, axis=5)] + [point(d, axis=0, wobble=0.1 * i) for i, d in enumerate(distractors)]
    )
    dense_only = await store.dense_query(A, vec(0), limit=3, now=T0)
    assert target.id not in [h.memory.id for h in dense_only]
    hits = await store.hybrid_query(A, vec(0), BM25.query("ZQX-7781"), limit=3, now=T0)
    assert target.id in [h.memory.id for h in hits]


async def test_recall_candidates_carry_their_cosine_and_stored_bm25_weights(store):
    """Recall scores candidates without opening them: each comes with the cosine of its stored vector
    (one only BM25 found, past every point the dense list fetched, too) and its BM25 weights as stored;
    the pinned kinds' nearest come from the same call."""
    target = mem(A, "Replacement part ZQX-7781 was ordered")
    rule = mem(A, "User never flies", kind="constraint")
    distractors = [mem(A, f"Unrelated note number {i} about gardening") for i in range(CUT_MARGIN + 4)]
    vectors = {target.id: vec(7, wobble=0.5), rule.id: vec(3)}
    vectors |= {d.id: vec(0, wobble=0.01 * i) for i, d in enumerate(distractors)}
    everything = [target, rule, *distractors]
    await store.upsert(A, [MemoryPoint(m, vectors[m.id], BM25.document(m.text)) for m in everything])
    query = vec(0)
    found, pinned = await store.recall_candidates(
        A, query, BM25.query("ZQX-7781"), limit=3, now=T0, kinds=("constraint",), kinds_limit=2
    )
    by_id = {c.id: c for c in found}
    assert target.id in by_id and len(found) == 3
    for c in found:
        expected = float(np.dot(query, vectors[c.id]) / np.linalg.norm(vectors[c.id]))
        assert c.cosine == pytest.approx(expected, abs=1e-5)
    stored = BM25.document(target.text)
    assert by_id[target.id].terms == pytest.approx(dict(zip(stored.indices, stored.values, strict=True)))
    assert [c.id for c in pinned] == [rule.id] and pinned[0].score == pytest.approx(0.0, abs=1e-5)
    texts = {m.id: m.text for m in everything}
    assert [h.memory.text for h in await store.open(A, found)] == [texts[c.id] for c in found]


async def test_dense_query_scores_are_cosines(store):
    m = mem(A, "anything")
    await store.upsert(A, [point(m, axis=4)])
    (hit,) = await store.dense_query(A, vec(4, wobble=1.0), limit=1, now=T0)
    assert hit.score == pytest.approx(1 / np.sqrt(2), abs=1e-4)


def _tied(n: int) -> list[Memory]:
    """``n`` memories equal in every score: same text (BM25), same vector (cosine), known ids."""
    return [mem(A, "User drinks green tea", id=f"00000000-0000-4000-8000-{i:012d}") for i in range(n)]


async def _loaded_both_ways(kind: str, tmp_path, memories: list[Memory], head: list[MemoryPoint]):
    """Two stores holding ``head`` then ``memories``, one in the given order, one reversed."""
    stores = []
    for name, order in (("forward", memories), ("backward", memories[::-1])):
        s = await open_store(kind, tmp_path / name)
        await s.upsert(A, head + [point(m, axis=0, wobble=0.5) for m in order])
        stores.append(s)
    return stores


async def _close(stores) -> None:
    for s in stores:
        await s.close()
        if isinstance(s, QdrantStore):
            await s.client.close()


@pytest.mark.parametrize("kind", ["edge", "qdrant"])
async def test_tied_candidates_are_cut_the_same_whatever_the_insertion_order(kind, tmp_path):
    """Six memories tie on both scores and only three are asked for: the three kept are the same on two
    stores loaded in opposite orders (the smallest ids), where the backend's own cut kept the first
    inserted, so two replicas or two runs disagreed on the candidates."""
    memories = _tied(6)
    stores = await _loaded_both_ways(kind, tmp_path, memories, [])
    try:
        for s in stores:
            hybrid = await s.hybrid_query(A, vec(0), BM25.query("green tea"), limit=3, now=T0)
            assert [h.memory.id for h in hybrid] == [m.id for m in memories[:3]]
            dense = await s.dense_query(A, vec(0), limit=3, now=T0)
            assert [h.memory.id for h in dense] == [m.id for m in memories[:3]]
    finally:
        await _close(stores)


@pytest.mark.parametrize("kind", ["edge", "qdrant"])
async def test_a_tie_running_past_the_fetched_candidates_is_left_out(kind, tmp_path):
    """More memories tie at the cut than a candidate list fetches: which of them the backend returned is
    its choice, so none of them is kept; the better memory above the tie is."""
    best = mem(A, "User drinks green tea with jasmine every morning")
    memories = _tied(40)
    stores = await _loaded_both_ways(kind, tmp_path, memories, [point(best, axis=0)])
    try:
        for s in stores:
            hits = await s.hybrid_query(A, vec(0), BM25.query("green tea"), limit=3, now=T0)
            assert [h.memory.id for h in hits] == [best.id]
    finally:
        await _close(stores)


async def test_assistant_restriction(store):
    own = mem(A, "Told to assistant one", assistant_id="asst_1")
    other = mem(A, "Told to assistant two", assistant_id="asst_2")
    unassigned = mem(A, "Told to nobody in particular")
    await store.upsert(A, [point(own, 0), point(other, 0, 0.1), point(unassigned, 0, 0.2)])
    restricted = await store.hybrid_query(A, vec(0), BM25.query("told"), limit=10, now=T0, assistant_id="asst_1")
    assert {h.memory.id for h in restricted} == {own.id, unassigned.id}
    shared = await store.hybrid_query(A, vec(0), BM25.query("told"), limit=10, now=T0)
    assert {h.memory.id for h in shared} == {own.id, other.id, unassigned.id}


async def test_scroll_pages_with_a_cursor(store):
    memories = [mem(A, f"fact number {i}") for i in range(7)]
    await store.upsert(A, [point(m, i) for i, m in enumerate(memories)])
    await store.upsert(B, [point(mem(B, "not alice's"), 1)])
    seen, cursor, pages = [], None, 0
    while True:
        page = await store.scroll(A, cursor=cursor, limit=3)
        seen += [m.id for m in page.memories]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(m.id for m in memories) and len(seen) == 7
    assert pages == 3


async def test_delete_scope_counts_and_spares_other_scopes(store):
    await store.upsert(A, [point(mem(A, f"a{i}"), i) for i in range(3)])
    t = mem(A, "a tombstone")
    await store.upsert(A, [point(t, 5)])
    await store.rewrite(A, [t.model_copy(update={"deleted_at": T0})])
    await store.upsert(A_BOB, [point(mem(A_BOB, "bob's"), 1)])
    assert await store.delete_scope(A) == 4
    assert await store.count(A, include_deleted=True) == 0
    assert await store.count(A_BOB) == 1


async def test_set_payloads_merges_fields(store):
    m = mem(A, "User drinks oat milk")
    await store.upsert(A, [point(m)])
    await store.set_payloads(A, {m.id: access_payload(5, T0 + timedelta(hours=2))})
    (got,) = await store.get(A, [m.id])
    assert got.access_count == 5 and got.last_accessed_at == T0 + timedelta(hours=2)
    assert got.text == m.text and got.created_at == m.created_at


async def test_hard_delete(store):
    keep, drop = mem(A, "keep me"), mem(A, "drop me")
    await store.upsert(A, [point(keep, 0), point(drop, 1)])
    await store.delete(A, [drop.id])
    assert [m.id for m in (await store.scroll(A, include_deleted=True)).memories] == [keep.id]


@pytest.mark.parametrize("kind", ["edge", "qdrant"])
async def test_reopening_with_another_dimension_is_a_clear_error(kind, tmp_path):
    client = AsyncQdrantClient(location=":memory:") if kind == "qdrant" else None
    first = await open_store(kind, tmp_path, dim=DIM, client=client)
    await first.upsert(A, [point(mem(A, "stored with 8 dims"))])
    if kind == "edge":
        await first.close()
    with pytest.raises(DimensionMismatchError) as err:
        await open_store(kind, tmp_path, dim=384, client=client)
    assert "8" in str(err.value) and "384" in str(err.value)
    assert (err.value.stored, err.value.expected) == (8, 384)
    # nothing was damaged: the right dimension still opens and reads the data
    again = first if kind == "qdrant" else await open_store(kind, tmp_path, dim=DIM)
    assert await again.count(A) == 1
    await again.close()
    if client is not None:
        await client.close()


async def test_edge_store_persists_across_close_and_reopen(tmp_path):
    store = await open_store("edge", tmp_path)
    m = mem(A, "User was born in Porto", history=[HistoryEntry(text="User was born in Braga", changed_at=T0)])
    await store.upsert(A, [point(m, 6)])
    await store.set_payloads(A, {m.id: access_payload(2, T0)})
    await store.close()

    reopened = await open_store("edge", tmp_path)
    try:
        (got,) = await reopened.get(A, [m.id])
        assert got.text == m.text and got.access_count == 2 and got.history == m.history
        hits = await reopened.hybrid_query(A, vec(6), BM25.query("Porto"), limit=3, now=T0)
        assert [h.memory.id for h in hits] == [m.id]
    finally:
        await reopened.close()


class _StoreOfEarlierReleases(EdgeStore):
    """The configuration stores were created with before the placement was set (Edge's defaults)."""

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine)},
            sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )


def _dense_placement(path) -> str | None:
    return json.loads((path / "edge_config.json").read_text())["vectors"]["dense"].get("memory")


async def test_a_store_created_by_an_earlier_release_opens_recalls_and_takes_writes(tmp_path):
    old = _StoreOfEarlierReleases(tmp_path / "memories", dim=DIM, sealer=SEALER)
    await old.start()
    porto, lisbon = mem(A, "User was born in Porto"), mem(A, "User lives in Lisbon")
    await old.upsert(A, [point(porto, 6), point(lisbon, 2)])
    await old.optimize()  # an optimized segment and an appendable one, both with the old placement
    await old.close()
    assert _dense_placement(tmp_path / "memories") is None

    store = await open_store("edge", tmp_path)
    try:
        hits = await store.hybrid_query(A, vec(6), BM25.query("Porto"), limit=3, now=T0)
        assert hits[0].memory.id == porto.id and hits[0].memory.text == porto.text
        (nearest,) = await store.dense_query(A, vec(2, wobble=1.0), limit=1, now=T0)
        assert nearest.memory.id == lisbon.id and nearest.score == pytest.approx(1 / np.sqrt(2), abs=1e-4)
        added = mem(A, "User plays the cello")
        await store.upsert(A, [point(added, 4)])
        assert await store.count(A) == 3
        await store.optimize()  # rewrites the segments with the new placement
        hits = await store.hybrid_query(A, vec(4), BM25.query("cello"), limit=3, now=T0)
        assert hits[0].memory.id == added.id
        assert await store.count(B) == 0
    finally:
        await store.close()
    assert _dense_placement(tmp_path / "memories") == "cold"


async def test_a_new_edge_store_still_opens_with_the_earlier_configuration(tmp_path):
    store = await open_store("edge", tmp_path)
    await store.upsert(A, [point(mem(A, "User was born in Porto"), 6)])
    await store.close()
    assert _dense_placement(tmp_path / "memories") == "cold"
    older = _StoreOfEarlierReleases(tmp_path / "memories", dim=DIM, sealer=SEALER)
    await older.start()
    try:
        assert await older.count(A) == 1
    finally:
        await older.close()


async def test_edge_store_refuses_calls_before_start(tmp_path):
    from proxy.memory.store import StoreError

    store = EdgeStore(tmp_path / "x", dim=DIM, sealer=SEALER)
    with pytest.raises(StoreError, match="not started"):
        await store.count(A)


# --- sealing ------------------------------------------------------------------------------------------


async def raw_payloads(store) -> dict[str, dict]:
    """Every point's payload as the backend holds it (no scope, nothing opened)."""
    records, _ = await store._scroll_records(store.dialect.combine([], [], []), 1000, None)
    return {str(r.id): dict(r.payload or {}) for r in records}


def legacy_payload(memory: Memory) -> dict:
    """A payload exactly as memproxy wrote it before sealing: every field in clear, raw subject, sha256."""
    import hashlib

    from proxy.memory.models import normalize_text

    payload = memory.model_dump(mode="json", exclude={"id"})
    payload["state"] = "deleted" if memory.deleted else "active"
    payload["content_hash"] = hashlib.sha256(normalize_text(memory.text).encode()).hexdigest()
    return payload


async def test_payloads_are_sealed_with_the_pseudonym_and_a_keyed_hash(store):
    m = mem(
        A,
        "User's passport number is X1234567",
        source=Source(thread_id="thread_secret", message_ids=["msg_secret"]),
        metadata={"note": "private note"},
        history=[HistoryEntry(text="old passport Y7654321", changed_at=T0, reason="renewed")],
        assistant_id="asst_1",
    )
    await store.upsert(A, [point(m)])
    await store.rewrite(A, [m.model_copy(update={"deleted_at": T0, "deleted_reason": "user asked: forget X1234567"})])
    payload = (await raw_payloads(store))[m.id]
    on_disk = str(payload)
    for clear in ("X1234567", "Y7654321", "thread_secret", "msg_secret", "private note", "renewed", "alice"):
        assert clear not in on_disk
    assert payload["subject"] == A.hash and payload["tenant"] == A.tenant and payload["assistant_id"] == "asst_1"
    assert payload["state"] == "deleted" and payload["kind"] == "fact"
    assert payload["sealed"].startswith("v1.") and set(payload) >= {"created_at", "updated_at", "expires_at"}
    key = await SEALER.key(A)
    assert payload["content_hash"] == key.content_hash(m.text)  # keyed: sha256 of the text is not it
    (tomb,) = await store.get(A, [m.id])
    assert tomb.subject == "alice" and tomb.text == m.text and tomb.deleted_reason.endswith("X1234567")
    with pytest.raises(ValueError, match="rewrite"):
        await store.set_payloads(A, {m.id: {"text": "in clear"}})


async def test_erasure_destroys_the_key_so_a_leftover_copy_cannot_be_opened(store):
    from proxy.memory.store import StoredPoint

    m = mem(A_BOB, "Bob's bank PIN is 9931")
    await store.upsert(A_BOB, [point(m, 2)])
    leftover = (await raw_payloads(store))[m.id]  # what a write-ahead log could still hold
    assert await store.delete_scope(A_BOB) == 1
    assert await SEALER.key(A_BOB) is None
    # the copy written back (as if recovered from the store's files) opens for nobody, not even its owner
    await store._upsert([StoredPoint(m.id, vec(2), BM25.document(m.text), leftover)])
    assert await store.get(A_BOB, [m.id]) == []
    assert await store.hybrid_query(A_BOB, vec(2), BM25.query("PIN"), limit=5, now=T0) == []
    # the owner writes again: a new key, and the old copy still reads as nothing
    fresh = mem(A_BOB, "Bob moved to Oslo")
    await store.upsert(A_BOB, [point(fresh, 3)])
    assert [x.id for x in (await store.scroll(A_BOB)).memories] == [fresh.id]
    await store.delete_scope(A_BOB)


async def test_points_written_before_sealing_are_sealed_in_place(store):
    from proxy.memory.store import StoredPoint

    old = mem(A, "User's cat is called Miso", source=Source(thread_id="thread_old"), metadata={"k": "v"})
    tomb = mem(A, "User used to live in Rome").model_copy(update={"deleted_at": T0, "deleted_reason": "moved"})
    bobs = mem(A_BOB, "Bob likes chess")
    for m, axis in ((old, 1), (tomb, 2), (bobs, 3)):
        await store._upsert([StoredPoint(m.id, vec(axis), BM25.document(m.text), legacy_payload(m))])
    assert await store.get(A, [old.id]) == []  # a raw subject is not a pseudonym: invisible until sealed

    assert await store.seal_legacy(lambda tenant, subject: owner(tenant, subject)) == 3
    assert await store.seal_legacy(lambda tenant, subject: owner(tenant, subject)) == 0  # idempotent

    raw = str(await raw_payloads(store))
    for clear in ("Miso", "Rome", "moved", "thread_old", "chess", "alice", "'bob'"):
        assert clear not in raw
    assert await store.get(A, [old.id]) == [old]
    assert (await store.get(A, [tomb.id]))[0] == tomb
    assert [m.text for m in await store.find(A, text="user's cat is called miso.")] == [old.text]
    hits = await store.hybrid_query(A_BOB, vec(3), BM25.query("chess"), limit=5, now=T0)
    assert [h.memory for h in hits] == [bobs]
