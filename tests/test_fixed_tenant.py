"""A fixed tenant (``MEMPROXY_TENANT``): the key names no tenant, so the memory API answers only the admin token.

Real proxies over the emulator, the real openai SDK and the memory API's own client.
"""

from __future__ import annotations

import openai
import pytest
from starlette.datastructures import Headers

from proxy.client import MemoryAPIError
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
