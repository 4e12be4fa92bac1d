"""The memory API through its Python client, as an application developer would use it."""

from __future__ import annotations

import httpx
import pytest
from starlette.datastructures import Headers

from proxy import audit
from proxy.client import AsyncMemory, Memory, MemoryAPIError
from proxy.identity import tenant_for
from proxy.owner import Owner


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy(admin_token="admin-secret")


@pytest.fixture
def alice(proxy, request):
    """A fresh subject per test, in tenant A (API key sk-tenant-a)."""
    with Memory(proxy.url, api_key="sk-tenant-a") as memory:
        yield memory.user(f"alice-{request.node.name}")


def test_remembered_fact_is_recalled_with_its_confidence_terms(alice) -> None:
    created = alice.remember("My company is Acme Corp and we run Kubernetes in production")
    assert created["action"] == "created"
    found = alice.recall("Which container orchestrator do we use?")["data"]
    assert found[0]["memory"]["id"] == created["memory"]["id"]
    assert set(found[0]["terms"]) == {"similarity", "semantic", "lexical", "recency", "frequency"}
    assert 0 < found[0]["confidence"] <= 1


def test_context_is_the_block_the_proxy_would_inject(alice) -> None:
    alice.remember("Prefers answers in metric units")
    context = alice.context("Which units should answers use?")
    assert context["count"] == 1 and context["tokens"] > 0
    assert '"Prefers answers in metric units"' in context["text"]
    assert context["text"].startswith("<memories>")


def test_the_same_fact_twice_is_stored_once(alice) -> None:
    first = alice.remember("Lives in Lyon")
    again = alice.remember("lives in lyon.")
    assert again["action"] == "duplicate" and again["memory"]["id"] == first["memory"]["id"]
    assert len(alice.list()["data"]) == 1


def test_update_keeps_history_and_delete_leaves_a_tombstone(alice) -> None:
    memory = alice.remember("We run Kubernetes in production")["memory"]
    updated = alice.update(memory["id"], "We moved from Kubernetes to Nomad", reason="user correction")
    assert updated["text"] == "We moved from Kubernetes to Nomad"
    assert [entry["text"] for entry in updated["history"]] == ["We run Kubernetes in production"]
    alice.delete(memory["id"], reason="user asked")
    assert alice.recall("Nomad")["data"] == []
    assert alice.list()["data"] == []
    tombstones = alice.list(include_deleted=True)["data"]
    assert tombstones[0]["deleted_reason"] == "user asked"


def test_list_pages_with_a_cursor(alice) -> None:
    texts = {"Owns a red bicycle", "Studies Japanese", "Has two cats", "Works as a nurse", "Loves jazz music"}
    for text in texts:
        alice.remember(text)
    first = alice.list(limit=3)
    second = alice.list(limit=3, cursor=first["next_cursor"])
    assert first["has_more"] and not second["has_more"]
    assert {m["text"] for m in first["data"] + second["data"]} == texts


def test_ttl_is_explicit_and_visible(alice) -> None:
    memory = alice.remember("Is travelling to Tokyo this week", kind="temporary", ttl_seconds=3600)["memory"]
    assert memory["expires_at"] is not None and memory["kind"] == "temporary"


def test_tenants_cannot_reach_each_others_memories(proxy, alice) -> None:
    secret = alice.remember("Has a medical appointment on Friday")["memory"]
    subject = alice._calls.prefix.rsplit("/", 1)[-1]
    with Memory(proxy.url, api_key="sk-tenant-b") as other_tenant:
        intruder = other_tenant.user(subject)
        assert intruder.list()["data"] == []
        assert intruder.recall("medical appointment")["data"] == []
        assert intruder.export()["memories"] == []
        with pytest.raises(MemoryAPIError) as caught:
            intruder.get(secret["id"])
        assert caught.value.status == 404
        with pytest.raises(MemoryAPIError):
            intruder.delete(secret["id"])
        assert intruder.forget()["deleted"]["memories"] == 0
    assert alice.get(secret["id"])["deleted_at"] is None
    assert alice.recall("medical appointment")["data"][0]["memory"]["id"] == secret["id"]


def test_subjects_inside_a_tenant_are_isolated(proxy, alice) -> None:
    alice.remember("Allergic to peanuts")
    with Memory(proxy.url, api_key="sk-tenant-a") as memory:
        assert memory.user("bob").recall("allergies peanuts")["data"] == []


def test_erasure_removes_everything_and_is_audited_without_the_name(proxy, alice) -> None:
    alice.remember("Phone number is 555-0100")
    alice.remember("Works night shifts")
    result = alice.forget()
    assert result["deleted"]["memories"] == 2
    assert alice.list(include_deleted=True)["data"] == []
    assert alice.recall("phone number")["data"] == []
    assert alice.export()["memories"] == []
    with Memory(proxy.url, api_key="sk-tenant-a") as memory:
        entries = memory.audit()["data"]
    erasure = next(entry for entry in entries if entry["id"] == result["audit_id"])
    assert erasure["action"] == "erase" and erasure["counts"]["memories"] == 2
    subject = alice._calls.prefix.rsplit("/", 1)[-1]
    assert subject not in str(entries) and erasure["subject"].startswith("s_")


def test_export_holds_history_tombstones_and_audit(alice) -> None:
    kept = alice.remember("Drives an electric car")["memory"]
    alice.update(kept["id"], "Drives a hybrid car")
    dropped = alice.remember("Plays chess on Sundays")["memory"]
    alice.delete(dropped["id"])
    exported = alice.export()
    by_id = {memory["id"]: memory for memory in exported["memories"]}
    assert by_id[kept["id"]]["history"][0]["text"] == "Drives an electric car"
    assert by_id[dropped["id"]]["deleted_at"] is not None
    assert [entry["action"] for entry in exported["audit"]] == ["export"]


def test_errors_are_openai_shaped(proxy, alice) -> None:
    assert httpx.get(proxy.url + "/memory/v1/users/u1/memories").status_code == 401
    broken = httpx.post(
        proxy.url + "/memory/v1/users/u1/memories",
        content=b"{not json",
        headers={"authorization": "Bearer sk-tenant-a", "content-type": "application/json"},
    )
    assert broken.status_code == 400 and "parse the JSON" in broken.json()["error"]["message"]
    with pytest.raises(MemoryAPIError) as caught:
        alice.remember("")
    assert caught.value.status == 400 and caught.value.body["error"]["param"] == "text"
    with pytest.raises(MemoryAPIError) as caught:
        alice.get("00000000-0000-0000-0000-000000000000")
    assert caught.value.status == 404


def tenant_of(proxy, api_key: str) -> str:
    """The tenant id an operator tool derives for a key (HMAC under the proxy's secret)."""
    runtime = proxy.app.state.runtime
    return tenant_for(Headers({"authorization": f"Bearer {api_key}"}), runtime.settings, runtime.secret)


def test_operator_reads_a_tenant_with_the_admin_token(proxy, alice) -> None:
    alice.remember("Speaks Portuguese")
    subject = alice._calls.prefix.rsplit("/", 1)[-1]
    response = httpx.get(
        f"{proxy.url}/memory/v1/users/{subject}/memories",
        headers={"authorization": "Bearer admin-secret", "x-memory-tenant": tenant_of(proxy, "sk-tenant-a")},
    )
    assert [m["text"] for m in response.json()["data"]] == ["Speaks Portuguese"]


async def test_async_client_round_trip(proxy) -> None:
    async with AsyncMemory(proxy.url, api_key="sk-tenant-c") as memory:
        user = memory.user("carol")
        await user.remember("Vegetarian since 2019")
        found = await user.recall("What does she eat?")
        assert found["data"][0]["memory"]["text"] == "Vegetarian since 2019"
        assert (await user.forget())["deleted"]["memories"] == 1


async def test_audit_chain_detects_tampering(proxy, alice) -> None:
    alice.remember("Temporary note")
    alice.forget()
    runtime, tenant = proxy.app.state.runtime, tenant_of(proxy, "sk-tenant-a")
    state = runtime.state
    assert (await audit.verify(state, tenant, secret=runtime.secret)).ok
    async with AsyncMemory(proxy.url, api_key="sk-tenant-a") as memory:
        listed = await memory.audit()
    assert not listed["has_more"]
    newest = listed["data"][-1]
    assert listed["head"] == {"seq": newest["seq"], "hash": newest["hash"]}
    entries, _ = await audit.entries(state, tenant)
    forged = {**entries[0], "counts": {"memories": 0}}
    await state.put_record(tenant, audit.COLLECTION, forged["id"], forged)
    verdict = await audit.verify(state, tenant, secret=runtime.secret)
    assert not verdict.ok and verdict.broken_at == forged["id"]


def test_owner_pseudonym_is_stable_keyed_and_never_names_the_user() -> None:
    alice = Owner.of(b"k1", "t", "alice@example.com")
    assert alice.hash == Owner.of(b"k1", "t", "alice@example.com").hash
    assert alice.hash != Owner.of(b"k2", "t", "alice@example.com").hash  # keyed: no secret, no guess to test
    assert alice.hash != Owner.of(b"k1", "t2", "alice@example.com").hash
    assert Owner.of(b"k1", "a:b", "c").hash != Owner.of(b"k1", "a", "b:c").hash
    assert "alice" not in alice.hash and "alice" not in repr(alice)


@pytest.mark.parametrize("operator_key", ["sk-operator", None])
def test_the_admin_token_never_reaches_the_upstream_embedder(make_proxy, emulator, operator_key) -> None:
    """An admin's memory API call embeds with MEMPROXY_LLM_API_KEY (or no key), never the admin token."""
    upstream = make_proxy(embedder="upstream", admin_token="admin-secret", llm_api_key=operator_key)
    admin = {"authorization": "Bearer admin-secret", "x-memory-tenant": tenant_of(upstream, "sk-tenant-a")}
    emulator.clear_requests()
    httpx.post(f"{upstream.url}/memory/v1/users/erin/memories", headers=admin, json={"text": "Collects vinyl"})
    httpx.post(f"{upstream.url}/memory/v1/users/erin/recall", headers=admin, json={"query": "records?"})
    sent = [entry["headers"].get("authorization") for entry in emulator.requests("/v1/embeddings")]
    assert sent, "the upstream embedder was called"
    assert "Bearer admin-secret" not in sent
    assert set(sent) == ({f"Bearer {operator_key}"} if operator_key else {None})
