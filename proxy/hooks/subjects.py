"""The user a thread's or a conversation's metadata names, the same way for Assistants and Responses.

Precedence, first match wins, on every route: the ``X-Memory-User`` header; the request body (its
``metadata`` keys, then ``safety_identifier``, then ``user``); the thread's or conversation's own
metadata (looked up upstream once, then remembered); else the thread or conversation itself.
"""

from __future__ import annotations

from starlette.requests import Request

from proxy.hooks.recall import tenant_of
from proxy.identity import subject_for
from proxy.owner import Owner, subject_problem
from proxy.runtime import Runtime

NAMED_TTL = 30 * 86400.0
"""How long a container's named user is remembered (as long as a thread's latest messages)."""
UNNAMED_TTL = 600.0
"""How long a container whose metadata names no user is not looked up again (metadata may change)."""


async def named_user(request: Request, runtime: Runtime, namespace: str, key: str, path: str) -> str | None:
    """The user the metadata of the container at ``path`` names (remembered under ``namespace``/``key``), or None.

    A failed lookup is not remembered: the next request asks again.
    """
    tenant = tenant_of(request, runtime)
    if tenant is None:
        return None
    mine = runtime.state.tenant(tenant)
    known = await mine.get(namespace, key)
    if isinstance(known, str):
        return known or None
    container = await runtime.forwarder.fetch_json(request, path)
    if not isinstance(container, dict):
        return None
    named = subject_for(request.headers, runtime.settings, {"metadata": container.get("metadata")})
    if named is None:
        await mine.set(namespace, key, "", ttl=UNNAMED_TTL)
    elif subject_problem(named) is None:  # erasure of the user removes it (subject=)
        owner = Owner.of(runtime.secret, tenant, named)
        await mine.set(namespace, key, named, ttl=NAMED_TTL, subject=owner)
    return named
