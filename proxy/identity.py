"""Who owns a memory (tenant) and whom it is about (subject), from what a request carries.

The tenant is derived, never configured per key: an HMAC of the upstream credential under a
server secret, so two applications with different keys can never see each other's memories and
the key itself is never stored. Whom a memory is about, with its keyed pseudonym, is an
:class:`~proxy.owner.Owner`.

An operator's admin token (``MEMPROXY_ADMIN_TOKEN``) is compared in constant time. With a fixed
tenant (``MEMPROXY_TENANT``) a key names no tenant, so any bearer would do: the memory API then
serves the admin token only, and without one it serves nobody (:func:`memory_api_refusal`).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers

from proxy.config import Settings
from proxy.errors import MemproxyError
from proxy.owner import digest

SECRET_FILE = "secret"


class MissingSecret(MemproxyError):
    """Scaled out, every replica must derive the same tenants, so the secret must be shared."""


def load_secret(settings: Settings) -> bytes:
    """The server secret: configured, or generated once under the data directory (one replica)."""
    if settings.secret:
        return settings.secret.get_secret_value().encode()
    if settings.redis_url:
        raise MissingSecret(
            "MEMPROXY_SECRET must be set when MEMPROXY_REDIS_URL is: replicas must share it "
            "to derive the same tenant from the same API key."
        )
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def credential(headers: Headers) -> str | None:
    """The upstream credential: ``Authorization: Bearer ...`` (OpenAI) or ``api-key`` (Azure)."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key") or None


def is_admin(headers: Headers, settings: Settings) -> bool:
    """Whether the request's bearer credential is the admin token, compared in constant time."""
    token, admin = credential(headers), settings.admin_token
    if token is None or admin is None:
        return False
    return hmac.compare_digest(token.encode(), admin.get_secret_value().encode())


def upstream_key(headers: Headers, settings: Settings) -> str | None:
    """The key memproxy may send upstream on this caller's behalf (embeddings, deletions).

    The caller's own key; for the admin token, which is never an upstream key, the configured
    ``MEMPROXY_LLM_API_KEY`` (or none): the admin token must never leave the proxy.
    """
    if is_admin(headers, settings):
        return settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return credential(headers)


def memory_api_refusal(settings: Settings) -> str | None:
    """Why the memory API must serve nobody, or None when it may serve.

    A fixed tenant takes no tenant from the key, so any bearer token would reach every user's
    memories: only the admin token may, and without one nobody may.
    """
    if settings.tenant and settings.admin_token is None:
        return (
            "The memory API is disabled: this proxy has a fixed tenant (MEMPROXY_TENANT), so an API key does not "
            "identify a tenant. Set MEMPROXY_ADMIN_TOKEN and send it as the bearer token of memory API calls."
        )
    return None


def tenant_for(headers: Headers, settings: Settings, secret: bytes) -> str | None:
    """``MEMPROXY_TENANT`` if fixed, else the credential's HMAC; None when there is no credential."""
    if settings.tenant:
        return settings.tenant
    key = credential(headers)
    return "t_" + digest(secret, "tenant", key) if key else None


def subject_for(headers: Headers, settings: Settings, body: dict[str, Any], fallback: str | None = None) -> str | None:
    """Whose memories, first match wins: header, metadata key, the body's user fields, ``fallback``.

    ``fallback`` is the thread or conversation itself (memory that outlives truncation inside one
    long thread); without one a request has no subject and gets no memory. The proxy never guesses
    a user across threads.
    """
    named = headers.get(settings.memory_user_header)
    if named:
        return named
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key in settings.memory_user_keys:
            value = metadata.get(key)
            if isinstance(value, str) and value:
                return value
    for key in ("safety_identifier", "user"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback
