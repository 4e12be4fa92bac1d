"""GDPR erasure across systems: memories, state, pending jobs and the upstream threads / conversations.

A user is seen through passthrough Assistants (a thread) and Responses (a conversation), has
memories and a pending extraction job; after ``DELETE /memory/v1/users/{u}`` nothing of them is
left anywhere: memory API, state store (read from its file), upstream (404).
"""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import openai
import pytest
import redis

from proxy.client import Memory
from proxy.owner import Owner, digest

KEY = "sk-erasure-app"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def proxy(request, make_proxy):
    """The same erasure, proven on the embedded state store and on Redis (several replicas)."""
    options = {"assistants": "passthrough", "erasure_backoff": 0.01, "erasure_attempts": 3}
    if request.param == "redis":
        url = request.getfixturevalue("redis_server_url")
        options |= {"redis_url": url, "secret": "erasure-secret", "redis_prefix": f"erasure-{uuid.uuid4().hex[:8]}"}
        options |= {"single_replica": True}  # one process on this Redis: its embedded memories are all there are
    return make_proxy(**options)


@pytest.fixture
def user() -> str:
    return f"alice-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture
def client(proxy):
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0) as client:
        yield client


def api(proxy, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(
        method, proxy.url + "/memory/v1" + path, headers={"authorization": f"Bearer {KEY}"}, timeout=30, **kwargs
    )


def seen_everywhere(proxy, client, user: str) -> tuple[str, str]:
    """The user: a passthrough thread, a Responses conversation (one pending job), two memories."""
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "I keep bees in my garden"}], metadata={"user_id": user}
    )
    conversation = client.conversations.create()
    client.responses.create(model="gpt-4o-mini", input="I live in Lisbon", user=user, conversation=conversation.id)
    with Memory(proxy.url, api_key=KEY) as memory:
        memory.user(user).remember("Keeps bees in the garden")
        memory.user(user).remember("Lives in Lisbon")
    return thread.id, conversation.id


def state_dump(proxy) -> str:
    """Every row (SQLite) or every key and value under the proxy's prefix (Redis), as text."""
    settings = proxy.app.state.runtime.settings
    if settings.redis_url:
        return redis_dump(settings.redis_url, settings.redis_prefix)
    with sqlite3.connect(settings.data_dir / "state.sqlite3") as db:
        return "\n".join(db.iterdump())


def redis_dump(url: str, prefix: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    read = {
        "string": client.get,
        "list": lambda k: client.lrange(k, 0, -1),
        "set": client.smembers,
        "hash": client.hgetall,
        "zset": lambda k: client.zrange(k, 0, -1),
        "stream": lambda k: client.xrange(k),
    }
    try:
        return "\n".join(f"{key} {read[client.type(key)](key)}" for key in client.scan_iter(f"{prefix}*"))
    finally:
        client.close()


def tenant_of(proxy) -> str:
    return "t_" + digest(proxy.app.state.runtime.secret, "tenant", KEY)


def test_erasure_leaves_nothing_of_the_user_here_or_upstream(proxy, client, emulator, user) -> None:
    thread_id, conversation_id = seen_everywhere(proxy, client, user)
    runtime, tenant = proxy.app.state.runtime, tenant_of(proxy)
    exported = api(proxy, "GET", f"/users/{user}/export").json()
    assert exported["upstream"] == {"threads": [thread_id], "conversations": [conversation_id]}
    assert len(exported["memories"]) == 2
    hashed = Owner.of(runtime.secret, tenant, user).hash
    assert hashed in state_dump(proxy)  # indexed: the pending job and the tracked ids

    erased = api(proxy, "DELETE", f"/users/{user}").json()

    assert erased["outcome"] == "ok" and erased["failed"] == []
    assert erased["deleted"]["memories"] == 2 and erased["deleted"]["jobs"] == 1
    assert erased["deleted"]["upstream_threads"] == 1 and erased["deleted"]["upstream_conversations"] == 1
    assert erased["upstream"]["threads"] == [thread_id] and erased["upstream"]["conversations"] == [conversation_id]
    # upstream: gone
    assert (
        httpx.get(f"{emulator.base_url}/threads/{thread_id}", headers={"authorization": f"Bearer {KEY}"}).status_code
        == 404
    )
    assert (
        httpx.get(
            f"{emulator.base_url}/conversations/{conversation_id}", headers={"authorization": f"Bearer {KEY}"}
        ).status_code
        == 404
    )
    # memory API: nothing
    assert api(proxy, "GET", f"/users/{user}/memories?include_deleted=true").json()["data"] == []
    assert api(proxy, "POST", f"/users/{user}/recall", json={"query": "bees Lisbon"}).json()["data"] == []
    after = api(proxy, "GET", f"/users/{user}/export").json()
    assert after["memories"] == [] and after["upstream"] == {"threads": [], "conversations": []}
    # state store: no entry, index or job of the user; only the audit trail names their pseudonym
    dump = state_dump(proxy)
    # only the audit trail and the erasure fence (a time, for 30 days) name their pseudonym
    outside_audit = [line for line in dump.splitlines() if '"action":' not in line and "erasure_fence" not in line]
    assert user not in dump and Owner.of(runtime.secret, tenant, user).legacy_hash not in dump
    assert not [line for line in outside_audit if hashed in line]
    assert thread_id not in dump and conversation_id not in dump
    audit = api(proxy, "GET", "/audit").json()["data"]
    entry = next(e for e in audit if e["id"] == erased["audit_id"])
    assert entry["subject"] == hashed and entry["outcome"] == "ok"
    assert entry["counts"]["upstream_threads"] == 1 and entry["counts"]["memories"] == 2


def test_a_failing_upstream_delete_is_partial_reported_and_retried_later(proxy, client, emulator, user) -> None:
    thread_id, _conversation_id = seen_everywhere(proxy, client, user)
    emulator.fault(method="DELETE", path="/v1/threads", status=500, times=0)

    erased = api(proxy, "DELETE", f"/users/{user}").json()

    assert erased["outcome"] == "partial"
    assert erased["failed"] == [
        {"system": "upstream", "kind": "thread", "id": thread_id, "error": "upstream answered 500", "attempts": 3}
    ]
    assert erased["deleted"]["memories"] == 2 and erased["deleted"]["upstream_conversations"] == 1
    assert len([r for r in emulator.requests() if r["method"] == "DELETE" and thread_id in r["path"]]) == 3
    entry = next(e for e in api(proxy, "GET", "/audit").json()["data"] if e["id"] == erased["audit_id"])
    assert entry["outcome"] == "partial" and entry["counts"]["upstream_failed"] == 1
    assert api(proxy, "GET", f"/users/{user}/export").json()["upstream"]["threads"] == [thread_id]  # not dropped

    emulator.clear_faults()
    again = api(proxy, "DELETE", f"/users/{user}").json()
    assert again["outcome"] == "ok" and again["upstream"]["threads"] == [thread_id]
    assert (
        httpx.get(f"{emulator.base_url}/threads/{thread_id}", headers={"authorization": f"Bearer {KEY}"}).status_code
        == 404
    )


def test_keep_upstream_erases_memories_but_leaves_the_threads(proxy, client, emulator, user) -> None:
    thread_id, _conversation_id = seen_everywhere(proxy, client, user)
    erased = api(proxy, "DELETE", f"/users/{user}?keep_upstream=true").json()
    assert erased["outcome"] == "ok" and erased["upstream"]["kept"] is True
    assert erased["deleted"]["memories"] == 2 and erased["deleted"]["upstream_threads"] == 0
    assert client.beta.threads.retrieve(thread_id).id == thread_id
    assert not [r for r in emulator.requests() if r["method"] == "DELETE"]


def test_erasure_deletes_the_users_bridge_threads_even_without_memories(make_proxy, user) -> None:
    bridge = make_proxy(assistants="bridge", extractor="verbatim")
    with openai.OpenAI(base_url=bridge.url + "/v1", api_key=KEY, max_retries=0) as client:
        assistant = client.beta.assistants.create(model="gpt-4o-mini")
        thread = client.beta.threads.create(metadata={"user_id": user})
        client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=assistant.id,
            poll_interval_ms=20,
            additional_messages=[{"role": "user", "content": "What time is it?"}],
        )
        erased = api(bridge, "DELETE", f"/users/{user}").json()
        assert erased["outcome"] == "ok" and erased["upstream"]["threads"] == [thread.id]
        with pytest.raises(openai.NotFoundError):
            client.beta.threads.retrieve(thread.id)
