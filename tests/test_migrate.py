"""Thread migration: every message of a long thread, chunked, resumable after a kill, idempotent."""

from __future__ import annotations

import uuid

import httpx
import pytest

from proxy.config import Settings
from proxy.migrate import CURSOR_NS, Migration, split_text
from proxy.owner import Owner
from proxy.runtime import open_runtime

KEY = "sk-migrate"
TOPICS = [
    "I grow tomatoes on my balcony",
    "My sister lives in Toronto",
    "I am learning to play the cello",
    "I drive a blue Volvo",
    "My favourite novel is Dune",
    "I swim every Tuesday morning",
    "I work as a structural engineer",
    "My dog is called Pepper",
    "I am vegetarian since 2015",
    "I collect vintage cameras",
]
LAST = "I am allergic to penicillin and always carry an epipen"
LONG_SEGMENTS = [
    "The first part is about my grandmother's farm near the river, with cows and an old red barn. ",
    "The second part tells how I moved to Berlin for a job in software and learned German at night. ",
    "The third part ends the story: I was born in Reykjavik during a snowstorm in January. ",
]


def user_text(i: int) -> str:
    return f"{TOPICS[i % len(TOPICS)]} (note {i})"


@pytest.fixture(scope="module")
def long_thread(emulator_server):
    """A 500-message thread on the emulator: user and assistant alternate; one user message is long."""
    with httpx.Client(base_url=emulator_server.url + "/v1", headers={"authorization": f"Bearer {KEY}"}) as http:
        thread = http.post("/threads", json={}).json()["id"]
        ids = []
        for i in range(500):
            if i % 2:
                text = f"Noted, thanks for telling me ({i})."
            elif i == 498:
                text = LAST
            elif i == 200:
                text = "".join(segment * 8 for segment in LONG_SEGMENTS)  # ~6000 characters
            else:
                text = user_text(i)
            ids.append(
                http.post(
                    f"/threads/{thread}/messages", json={"role": "assistant" if i % 2 else "user", "content": text}
                ).json()["id"]
            )
    return thread, ids


@pytest.fixture
def settings(tmp_path, emulator_server, memory_model_dir):
    return Settings(
        upstream_url=emulator_server.url + "/v1",
        data_dir=tmp_path,
        embed_model_path=memory_model_dir,
        assistants="passthrough",
        extractor="verbatim",
        worker_in_proxy=False,
        migrate_chunk_messages=20,
        migrate_message_chars=2000,
    )


def test_split_text_loses_nothing_and_respects_the_limit() -> None:
    text = " ".join(f"word{i}" for i in range(3000))
    parts = split_text(text, 2000)
    assert all(len(part) <= 2000 for part in parts) and len(parts) > 1
    assert " ".join(parts).split() == text.split()
    assert split_text("x" * 4500, 2000) == ["x" * 2000, "x" * 2000, "x" * 500]


async def test_a_500_message_thread_migrates_resumes_after_a_kill_and_never_twice(
    settings, local_embedder, long_thread, emulator_session
) -> None:
    thread, ids = long_thread
    handle, _ = emulator_session
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with open_runtime(settings, embedder=local_embedder) as runtime:
        migration = Migration(runtime, Owner.of(runtime.secret, "tenant-m", user), api_key=KEY)
        seen: list[tuple[int, int]] = []

        # killed after 5 chunks (100 messages): the cursor holds where it stopped
        first = await migration.run([thread], max_chunks=5)
        assert first.threads[0].status == "stopped" and first.threads[0].chunks == 5
        assert (await migration.cursor(thread))["after"] == ids[99]

        handle.clear_requests()
        resumed = await migration.run([thread], progress=lambda t, m, c: seen.append((m, c)))
        result = resumed.threads[0]
        # 400 messages, one of them in 3 parts: 402 units in chunks of 20 whole messages
        assert result.status == "done" and result.chunks == 21 and result.messages == 400
        listed = [r for r in handle.requests() if r["path"] == f"/v1/threads/{thread}/messages"]
        assert listed[0]["query_params"]["after"] == ids[99]  # resumed from the cursor, not from the start
        assert len(listed) == 4 and seen[-1] == (400, 21)  # 400 messages in pages of 100: no cap
        cursor = await migration.cursor(thread)
        assert cursor == {"after": ids[-1], "chunk": 26, "messages": 500}

        memories = await runtime.memory.of(Owner.of(runtime.secret, "tenant-m", user)).export()
        texts = [memory.text for memory in memories]
        last = next(memory for memory in memories if memory.text == LAST)
        assert last.source.thread_id == thread and ids[498] in last.source.message_ids
        assert last.metadata["route"] == "migration" and last.metadata["turn_id"] in (
            f"migrate:{thread}:24",
            f"migrate:{thread}:25",
        )
        assert any("born in Reykjavik during a snowstorm" in text for text in texts)  # split, not truncated
        assert any("grandmother's farm" in text for text in texts)
        assert all(len(text) <= 2000 for text in texts)

        # a second run adds nothing: nothing after the cursor
        again = await migration.run([thread])
        assert again.threads[0].chunks == 0 and again.threads[0].added == 0
        # even with the cursor lost, the per-chunk markers skip every chunk
        await runtime.state.tenant("tenant-m").delete(CURSOR_NS, migration._key(thread))
        replay = await migration.run([thread])
        assert replay.threads[0].skipped_chunks == 26 and replay.threads[0].added == 0
        assert len(await runtime.memory.of(Owner.of(runtime.secret, "tenant-m", user)).export()) == len(memories)


async def test_an_unknown_thread_fails_alone_and_is_reported(settings, local_embedder, long_thread) -> None:
    thread, _ = long_thread
    async with open_runtime(settings, embedder=local_embedder) as runtime:
        summary = await Migration(runtime, Owner.of(runtime.secret, "tenant-m", "bob"), api_key=KEY).run(
            ["thread_missing", thread], max_chunks=1
        )
    assert [r.status for r in summary.threads] == ["failed", "stopped"]
    assert summary.threads[0].error == "upstream answered 404" and not summary.ok


def test_the_migrate_endpoint_mines_a_thread_once(make_proxy, emulator) -> None:
    proxy = make_proxy(assistants="passthrough", extractor="verbatim")
    headers = {"authorization": f"Bearer {KEY}"}
    thread = httpx.post(
        f"{emulator.base_url}/threads",
        headers=headers,
        json={
            "messages": [
                {"role": "user", "content": "I teach chemistry at a high school"},
                {"role": "assistant", "content": "Great."},
                {"role": "user", "content": "My bike is a green Brompton"},
            ]
        },
    ).json()["id"]
    url = proxy.url + "/memory/v1/users/dana/migrate"
    first = httpx.post(url, headers=headers, json={"threads": [thread]}, timeout=30).json()
    assert first["ok"] and first["totals"] == {"messages": 3, "chunks": 1, "added": 2}
    memories = httpx.get(proxy.url + "/memory/v1/users/dana/memories", headers=headers).json()["data"]
    assert {m["source"]["thread_id"] for m in memories} == {thread} and len(memories) == 2
    again = httpx.post(url, headers=headers, json={"seen": True}, timeout=30).json()  # seen: migrated before
    assert again["threads"][0]["thread"] == thread and again["totals"] == {"messages": 0, "chunks": 0, "added": 0}
    refused = httpx.post(url, headers=headers, json={"threads": []})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "threads"
