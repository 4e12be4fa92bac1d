"""Erasure, checked on disk: after ``DELETE /memory/v1/users/{u}`` no file under the data directory holds
the user's id, what they said, or any of their memories' texts, reasons, sources or metadata, neither
while the proxy runs nor after it stopped and started again on the same directory.

Every byte of every file is scanned (Qdrant Edge's ``wal/`` and ``segments/``, ``state.sqlite3`` and
its ``-wal`` / ``-shm``). What stays by design, and the README says so: the owner's pseudonym, dates,
kind, counts, the sealed ciphertexts (whose key is destroyed), dense and BM25 vectors.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from conftest import TEST_SECRET

from proxy.config import Settings
from proxy.memory.factory import create_memory_service
from proxy.memory.sealing import KEYS_NS, MemoryKeyStore, Sealer, StateKeyStore
from proxy.memory.service import MemoryService
from proxy.memory.store import StoredPoint
from proxy.memory.store_edge import EdgeStore
from proxy.memory.store_qdrant import QdrantStore
from proxy.owner import Owner, digest
from proxy.state.sqlite import SqliteState

KEY = "sk-erasure-disk"


def found_in(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """needle -> every file under ``root`` whose bytes contain it (UTF-8), as paths relative to ``root``."""
    hits: dict[str, list[str]] = {}
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files, f"nothing under {root}"
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            if needle.encode() in data:
                hits.setdefault(needle, []).append(str(path.relative_to(root)))
    return hits


def api(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    response = httpx.request(
        method, url + "/memory/v1" + path, headers={"authorization": f"Bearer {KEY}"}, timeout=30, **kwargs
    )
    response.raise_for_status()
    return response


def test_after_erasure_no_file_of_the_data_dir_holds_the_user_even_after_a_restart(make_proxy) -> None:
    proxy = make_proxy(assistants="passthrough")
    data_dir = Path(proxy.app.state.runtime.settings.data_dir)
    user = f"erin-{uuid.uuid4().hex[:8]}@example.com"
    said = "I keep Carniolan bees behind the quinta in Sintra"
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0) as client:
        # a turn through the proxy: its text waits in the state store (a pending extraction job)
        client.responses.create(model="gpt-4o-mini", input=said, user=user)
    remembered = [
        ("Keeps Carniolan bees in Sintra", {"hive_name": "Bombyliidae-Q"}),
        ("Allergic to wasp stings, carries an EpiPen", {}),
        ("Drives a green Zastava Yugo", {}),
    ]
    ids = [
        api(proxy.url, "POST", f"/users/{user}/memories", json={"text": t, "metadata": m}).json()["memory"]["id"]
        for t, m in remembered
    ]
    api(
        proxy.url,
        "PATCH",
        f"/users/{user}/memories/{ids[0]}",
        json={"text": "Keeps 4 Carniolan hives in Sintra", "reason": "hive count Xylocopa-update"},
    )
    api(proxy.url, "DELETE", f"/users/{user}/memories/{ids[2]}", params={"reason": "sold the Zastava-tombstone"})
    exported = api(proxy.url, "GET", f"/users/{user}/export").json()  # before erasure: everything, in clear
    assert {m["text"] for m in exported["memories"]} == {
        "Keeps 4 Carniolan hives in Sintra",
        "Allergic to wasp stings, carries an EpiPen",
        "Drives a green Zastava Yugo",
    }
    assert exported["memories"][0]["subject"] == user
    needles = [user, said, "Carniolan", "Sintra", "EpiPen", "Zastava", "Bombyliidae-Q", "Xylocopa-update"]
    before = found_in(data_dir, needles)
    assert said in before and user in before  # the scan sees what the state store holds before erasure
    qdrant = data_dir / "qdrant"
    assert not found_in(qdrant, needles)  # the memory store never held any of it in clear: sealed

    erased = api(proxy.url, "DELETE", f"/users/{user}").json()

    assert erased["outcome"] == "ok" and erased["deleted"]["memories"] == 3 and erased["deleted"]["jobs"] == 1
    assert found_in(data_dir, needles) == {}, "while the proxy runs"
    proxy.stop()  # graceful: flushes and closes the shard and the SQLite file
    assert found_in(data_dir, needles) == {}, "after a graceful stop"
    again = make_proxy(assistants="passthrough", data_dir=data_dir)
    try:
        assert api(again.url, "GET", f"/users/{user}/export").json()["memories"] == []
        assert found_in(data_dir, needles) == {}, "after a restart on the same directory"
        secret = again.app.state.runtime.secret
        owner = Owner.of(secret, "t_" + digest(secret, "tenant", KEY), user)
        assert erased["subject"] == owner.hash  # what stays by design: the pseudonym (audit log, vector payloads)
        with sqlite3.connect(data_dir / "state.sqlite3") as db:  # the data key is gone
            keys = db.execute("SELECT key FROM kv_keys WHERE ns = ?", (KEYS_NS,)).fetchall()
        assert (f"{owner.tenant}:{owner.hash}",) not in keys
    finally:
        again.stop()


async def test_qdrant_client_local_mode_seals_payloads_and_pseudonymizes_the_subject(tmp_path, local_embedder) -> None:
    """The server backend's code path, on qdrant-client's persisted local mode: same sealing, same erasure."""
    from qdrant_client import AsyncQdrantClient

    alice = Owner.of(TEST_SECRET, "tenant-q", "alice.local@example.com")
    keys = MemoryKeyStore()
    client = AsyncQdrantClient(path=str(tmp_path / "qdrant-local"))
    store = QdrantStore(
        client, collection="mem", dim=local_embedder.dim, sealer=Sealer(keys, TEST_SECRET), owns_client=True
    )
    settings = Settings(data_dir=tmp_path, memory_access_flush_seconds=3600)
    service = MemoryService(store, local_embedder, settings, owns_store=True)
    await service.start()
    try:
        memory, _ = await service.of(alice).remember("Collects Zeiss Ikon cameras", metadata={"shelf": "Q-77"})
        records, _ = await store.client.scroll("mem", limit=10, with_payload=True)
        (payload,) = [r.payload for r in records]
        assert payload["subject"] == alice.hash and "Zeiss" not in str(payload) and "Q-77" not in str(payload)
        assert payload["sealed"].startswith("v1.") and (alice.tenant, alice.hash) in keys.records
        (got,) = (await service.of(alice).list()).memories
        assert got.subject == alice.subject and got.text == memory.text and got.metadata == {"shelf": "Q-77"}
        assert [s.memory.id for s in await service.of(alice).recall("Which cameras do I collect?")] == [memory.id]
        assert await service.of(alice).erase() == 1
        assert keys.records == {} and (await service.of(alice).list()).memories == []
    finally:
        await service.aclose()
    assert found_in(tmp_path, ["Zeiss", "Q-77", alice.subject]) == {}


@pytest.fixture
def legacy_point(local_embedder):
    """A memory exactly as memproxy stored it before sealing: every field in clear, the raw subject."""

    async def write(data_dir: Path, settings: Settings, tenant: str, subject: str, text: str) -> str:
        import hashlib

        from proxy.memory.models import Memory, Source, normalize_text
        from proxy.memory.sparse import Bm25Encoder

        memory = Memory(tenant=tenant, subject=subject, text=text, source=Source(thread_id="thread_legacy"))
        payload = memory.model_dump(mode="json", exclude={"id"}) | {
            "state": "active",
            "content_hash": hashlib.sha256(normalize_text(text).encode()).hexdigest(),
        }
        store = EdgeStore(data_dir / "qdrant" / settings.collection, dim=local_embedder.dim, sealer=Sealer.ephemeral())
        await store.start()
        (dense,) = await local_embedder.embed_documents([text])
        await store._upsert([StoredPoint(memory.id, dense, Bm25Encoder().document(text), payload)])
        await store.close()
        return memory.id

    return write


async def test_a_memory_stored_in_clear_before_sealing_is_read_and_sealed_at_start_up(
    tmp_path, local_embedder, legacy_point
) -> None:
    settings = Settings(data_dir=tmp_path, memory_access_flush_seconds=3600)
    legacy_id = await legacy_point(tmp_path, settings, "tenant-l", "lena", "Plays the theremin on Sundays")
    async with await SqliteState.open(tmp_path / "state.sqlite3") as state:
        service = await create_memory_service(
            settings, embedder=local_embedder, secret=TEST_SECRET, keys=StateKeyStore(lambda: state)
        )
        lena = Owner.of(TEST_SECRET, "tenant-l", "lena")
        try:
            (memory,) = (await service.of(lena).list()).memories
            assert (memory.id, memory.text, memory.subject) == (legacy_id, "Plays the theremin on Sundays", "lena")
            assert memory.source.thread_id == "thread_legacy"
            # sealed in place: the live payload has no clear text and the pseudonym as its subject
            records, _ = await service.store._scroll_records(service.store.dialect.combine([], [], []), 10, None)
            (payload,) = [dict(r.payload) for r in records]
            assert payload["subject"] == lena.hash and "theremin" not in str(payload) and "lena" not in str(payload)
            # and it behaves as any memory: deduped by its keyed hash, recalled, erased
            assert (await service.of(lena).remember("plays the theremin on sundays."))[1] == "duplicate"
            recalled = await service.of(lena).recall("What instrument do I play?")
            assert [s.memory.id for s in recalled] == [legacy_id]
            assert await service.of(lena).erase() == 1
        finally:
            await service.aclose()
