"""No planted id makes the proxy act on an upstream object it was not meant to touch.

Ids that reach upstream paths are checked for OpenAI's shape, and erasure deletes only what the
ownership register recorded for the owner, never ids found in user-writable metadata.
"""

from __future__ import annotations

import uuid

import httpx
import openai

from proxy.client import Memory
from proxy.owner import digest

KEY = "sk-deputy-app"
ADMIN = "admin-token-for-deputy-tests"


def upstream_paths(emulator) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in emulator.requests()]


def test_an_erasure_deletes_only_what_the_proxy_recorded_never_planted_ids(make_proxy, emulator) -> None:
    proxy = make_proxy(assistants="passthrough", admin_token=ADMIN, llm_api_key=KEY)
    headers = {"authorization": f"Bearer {KEY}"}
    victim = httpx.post(f"{emulator.base_url}/conversations", headers=headers, json={}).json()["id"]
    planted = {"source": {"thread_id": "../files/file-abc", "conversation_id": victim}, "thread_id": victim}
    tenant = "t_" + digest(proxy.app.state.runtime.secret, "tenant", KEY)
    as_admin = {"authorization": f"Bearer {ADMIN}", "x-memory-tenant": tenant}  # upstream: the operator's key
    for erase_with in (headers, as_admin):
        user = f"mallory-{uuid.uuid4().hex[:6]}"
        with Memory(proxy.url, api_key=KEY) as memory:
            memory.user(user).remember("Likes chess", metadata=planted)
        before = len(emulator.requests())

        report = httpx.delete(f"{proxy.url}/memory/v1/users/{user}", headers=erase_with).json()

        assert report["outcome"] == "ok" and report["upstream"]["conversations"] == []
        assert upstream_paths(emulator)[before:] == []  # nothing was sent upstream at all
    assert httpx.get(f"{emulator.base_url}/conversations/{victim}", headers=headers).status_code == 200


def test_a_planted_assistant_id_is_never_fetched(make_proxy, emulator) -> None:
    proxy = make_proxy(assistants="passthrough")
    user = f"mallory-{uuid.uuid4().hex[:6]}"
    with Memory(proxy.url, api_key=KEY) as memory:
        memory.user(user).remember("Prefers short answers")
    body = {
        "assistant_id": "../files/x?x=",
        "thread": {"messages": [{"role": "user", "content": "short answers please"}]},
    }
    answer = httpx.post(
        f"{proxy.url}/v1/threads/runs", json=body, headers={"authorization": f"Bearer {KEY}", "x-memory-user": user}
    )
    assert not any("/files" in path for path in upstream_paths(emulator))
    sent = emulator.requests("/v1/threads/runs")[-1]["body"]
    assert sent == body  # the hook failed open: the client's request went up untouched
    assert answer.headers["x-memory-status"] == "degraded"
    assert proxy.app.state.runtime.counters["degraded.hook_error"] >= 1


def test_the_bridge_refuses_ids_that_are_not_openai_ids(make_proxy, emulator) -> None:
    proxy = make_proxy(assistants="bridge")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0)
    thread = client.beta.threads.create()
    before = len(emulator.requests())
    answer = httpx.get(
        f"{proxy.url}/v1/threads/{thread.id}/messages/msg.1%3Fx=y", headers={"authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "invalid_request_error"
    assert not any("msg.1" in path for path in upstream_paths(emulator)[before:])
