"""A fixed tenant (``MEMPROXY_TENANT``): the key names no tenant, so the memory API answers only the admin token.

Real proxies over the emulator, the real openai SDK and the memory API's own client.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import httpx
import openai
import pytest
from starlette.datastructures import Headers

from proxy.client import Memory, MemoryAPIError
from proxy.config import Settings
from proxy.identity import is_admin

TENANT = "acme"
ADMIN = "op-7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b"
QUESTION = "Which city do I live in?"


def sdk(proxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-app", max_retries=0, default_headers=headers)


def refusal(call) -> MemoryAPIError:
    with pytest.raises(MemoryAPIError) as caught:
        call()
    return caught.value


@pytest.fixture(scope="module")
def locked(make_proxy):
    """Fixed tenant, no admin token; its own worker turns each finished turn into a memory (verbatim)."""
    return make_proxy(tenant=TENANT, extractor="verbatim", worker_in_proxy=True, worker_poll_interval=0.05)


@pytest.fixture(scope="module")
def guarded(make_proxy):
    return make_proxy(tenant=TENANT, admin_token=ADMIN)


def wait_for_jobs(proxy, done: int) -> None:
    worker = proxy.app.state.runtime.worker
    deadline = time.monotonic() + 10
    while worker.stats.processed < done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.stats.processed >= done


def test_without_an_admin_token_the_memory_api_refuses_everyone_and_says_why(locked, emulator) -> None:
    client = sdk(locked, **{"X-Memory-User": "alice"})
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "I live in Lyon."}])
    wait_for_jobs(locked, 1)

    for key in ("sk-app", "sk-anyone-else", ADMIN):
        with Memory(locked.url, api_key=key) as memory:
            alice = memory.user("alice")
            for call in (alice.list, alice.export, alice.forget, memory.audit, partial(alice.remember, "x")):
                error = refusal(call)
                assert error.status == 403, (key, error)
                assert error.body["error"]["code"] == "admin_token_required"
                message = error.body["error"]["message"]
                assert "MEMPROXY_TENANT" in message and "MEMPROXY_ADMIN_TOKEN" in message
    assert httpx.get(f"{locked.url}/memory/v1/users/alice/memories").status_code == 403  # no bearer at all

    # the refused erasure erased nothing: alice's memory still reaches her requests
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}]
    )
    assert raw.headers["x-memory-status"] == "ok", "forwarding and memory on requests work"
    assert "Lyon" in emulator.requests("/v1/chat")[-1]["body"]["messages"][0]["content"]
    assert raw.parse().choices[0].message.content.startswith(f'You said: "{QUESTION}"')


def test_readyz_says_why_without_failing_readiness(locked, guarded) -> None:
    ready = httpx.get(f"{locked.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", "forwarding and memory still serve"
    check = ready.json()["checks"]["memory_api"]
    assert "MEMPROXY_ADMIN_TOKEN" in check and "MEMPROXY_TENANT" in check
    assert httpx.get(f"{guarded.url}/readyz").json()["checks"]["memory_api"] == "ok"


def test_start_up_logs_the_refusal_once(make_proxy, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="memproxy.app"):
        make_proxy(tenant=TENANT)
        make_proxy(tenant=TENANT, admin_token=ADMIN)
        make_proxy()
    lines = [record.getMessage() for record in caplog.records if record.name == "memproxy.app"]
    assert len(lines) == 1 and "MEMPROXY_ADMIN_TOKEN" in lines[0], lines
    assert ADMIN not in caplog.text


def test_with_an_admin_token_only_that_token_opens_the_memory_api(guarded, emulator) -> None:
    for key in ("sk-app", ADMIN + "x", ADMIN[:-1], "op"):
        error = refusal(Memory(guarded.url, api_key=key).user("bob").list)
        assert error.status == 401 and error.body["error"]["code"] == "invalid_api_key", key
        assert "MEMPROXY_ADMIN_TOKEN" in error.body["error"]["message"]
    assert httpx.get(f"{guarded.url}/memory/v1/users/bob/memories").status_code == 401

    with Memory(guarded.url, api_key=ADMIN) as memory:
        bob = memory.user("bob")
        created = bob.remember("Lives in Lisbon")["memory"]
        assert [m["id"] for m in bob.list()["data"]] == [created["id"]]
        # the admin acts in the fixed tenant, the one the hooks act in: bob's requests recall it
        raw = sdk(guarded, **{"X-Memory-User": "bob"}).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}]
        )
        assert raw.headers["x-memory-status"] == "ok"
        assert "Lisbon" in emulator.requests("/v1/chat")[-1]["body"]["messages"][0]["content"]
        assert [m["text"] for m in bob.export()["memories"]] == ["Lives in Lisbon"]
        assert bob.forget()["deleted"]["memories"] == 1
        assert bob.list()["data"] == []
        assert memory.audit()["data"], "the audit log of the fixed tenant"


def test_the_admin_token_is_compared_in_constant_time(monkeypatch) -> None:
    import proxy.identity

    compared: list[tuple[bytes, bytes]] = []
    real = proxy.identity.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(proxy.identity.hmac, "compare_digest", spy)
    settings = Settings(tenant=TENANT, admin_token=ADMIN)
    assert is_admin(Headers({"authorization": f"Bearer {ADMIN}"}), settings)
    assert not is_admin(Headers({"authorization": "Bearer sk-app"}), settings)
    assert not is_admin(Headers({}), settings)
    assert compared == [(ADMIN.encode(), ADMIN.encode()), (b"sk-app", ADMIN.encode())]
    assert not is_admin(Headers({"authorization": f"Bearer {ADMIN}"}), Settings())


def test_secrets_are_never_shown(monkeypatch) -> None:
    values = {
        "secret": "server-secret-0123",
        "admin_token": ADMIN,
        "llm_api_key": "sk-extraction-0123",
        "qdrant_api_key": "qdrant-key-0123",
        "redis_url": "redis://:redis-password-0123@redis:6379/0",
    }
    settings = Settings(**values)
    shown = repr(settings) + str(settings)
    for name, value in values.items():
        assert value not in shown and "0123" not in shown, name
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == ADMIN
    monkeypatch.setenv("MEMPROXY_ADMIN_TOKEN", "")  # a template that renders an empty value
    monkeypatch.setenv("MEMPROXY_SECRET", "")
    assert Settings().admin_token is None and Settings().secret is None
