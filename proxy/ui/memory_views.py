"""Browsing memories: tenants -> owners (by pseudonym) -> one user's memories, a memory, and the query box.

Reads go through the same calls as the memory API (``runtime.memory.of(owner)``, scoped by tenant and
subject; recall timed into the same metric). Users are stored as keyed pseudonyms: a tenant's owners
are listed by pseudonym with what the clear fields say (counts, kinds, dates), and opening one takes
its user id, checked against the pseudonym.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.api import list_cursor
from proxy.errors import OpenAIError
from proxy.identity import upstream_key
from proxy.memory import census
from proxy.memory.models import KNOWN_KINDS, utcnow
from proxy.memory.render import render_block
from proxy.memory.service import MemoryNotFound, OwnerMemory
from proxy.observe import timed
from proxy.owner import MAX_SUBJECT, Owner, subject_problem

from .access import UIError, admin_only, runtime_of, tenant_access
from .links import tenant_url, user_url
from .session import Principal
from .web import guarded, page, redirect

PAGE_SIZE = 50
OWNERS_PER_PAGE = 100
MAX_QUERY_CHARS = 2000


def tenant_of(request: Request, who: Principal) -> str:
    """The tenant in the path, once ``who`` may see it (same bounds as a subject: it is a path segment)."""
    tenant: str = request.path_params["tenant"]
    if subject_problem(tenant) is not None:
        raise UIError(400, "That is not a tenant id.")
    tenant_access(request, who, tenant)
    return tenant


def subject_of(value: str | None) -> str:
    """A user id as the memory API accepts it (one rule: :func:`proxy.owner.subject_problem`), else a 400."""
    if value is None or subject_problem(value) is not None:
        raise UIError(400, f"A user id is 1 to {MAX_SUBJECT} characters, not blank, without control characters.")
    return value


def owner_of(request: Request, who: Principal, subject: str | None) -> tuple[Owner, OwnerMemory]:
    runtime = runtime_of(request)
    owner = Owner.of(runtime.secret, tenant_of(request, who), subject_of(subject))
    return owner, runtime.require_memory().of(owner)


def embed_key(request: Request, who: Principal) -> str | None:
    """The key an upstream embedder is called with: a script's own, the configured one for the admin, else none.

    A session never holds an API key, so a key's session can only re-embed with a local embedder.
    """
    runtime = runtime_of(request)
    if who.bearer:
        return upstream_key(request.headers, runtime.settings)
    key = runtime.settings.llm_api_key
    return key.get_secret_value() if who.admin and key is not None else None


@guarded
async def tenants_page(request: Request, who: Principal) -> Response:
    admin_only(who)
    runtime = runtime_of(request)
    found = await census.tenants(runtime.require_memory().store)
    fixed = runtime.settings.tenant
    return page(request, "tenants.html", who=who, census=found, fixed=fixed)


@guarded
async def open_tenant(request: Request, who: Principal) -> Response:
    """The tenants page's form: go to the tenant typed (one may hold no memory yet, only audit entries)."""
    admin_only(who)
    tenant = request.query_params.get("tenant", "").strip()
    if subject_problem(tenant) is not None:
        raise UIError(400, "That is not a tenant id.")
    return redirect(tenant_url(tenant))


@guarded
async def users_page(request: Request, who: Principal) -> Response:
    tenant = tenant_of(request, who)
    raw = request.query_params.get("page", "1")
    number = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    if number < 1:
        raise UIError(400, "page is a page number from 1.")
    found = await census.owners(runtime_of(request).require_memory().store, tenant)
    pages = max(1, -(-len(found.items) // OWNERS_PER_PAGE))
    shown = found.items[(number - 1) * OWNERS_PER_PAGE : number * OWNERS_PER_PAGE]
    return page(request, "users.html", who=who, tenant=tenant, census=found, shown=shown, number=number, pages=pages)


@guarded
async def open_user(request: Request, who: Principal) -> Response:
    """Open a user by id; given a pseudonym too, only if the id is the one behind it."""
    tenant = tenant_of(request, who)
    subject = subject_of(request.query_params.get("id"))
    expected = request.query_params.get("pseudonym")
    if expected and Owner.of(runtime_of(request).secret, tenant, subject).hash != expected:
        raise UIError(404, "That user id is not the one behind this pseudonym.")
    return redirect(user_url(tenant, subject))


def _scored_rows(items: list[Any], used: int) -> list[dict[str, Any]]:
    return [{"item": item, "in_block": index < used} for index, item in enumerate(items)]


@guarded
async def user_page(request: Request, who: Principal) -> Response:
    owner, memory = owner_of(request, who, request.query_params.get("id"))
    runtime = runtime_of(request)
    params = request.query_params
    try:
        cursor = list_cursor(params.get("cursor"))
    except OpenAIError:
        raise UIError(400, "That page cursor is not one this list handed out.") from None
    listing = await memory.list(cursor, PAGE_SIZE, include_deleted=True)
    query = params.get("q", "").strip()[:MAX_QUERY_CHARS]
    result = None
    if query:
        items = await timed(runtime.observer.recall, memory.recall(query, api_key=embed_key(request, who)))
        settings = runtime.settings
        block = render_block(items, budget_tokens=settings.memory_block_tokens, max_chars=settings.memory_line_chars)
        result = {"block": block, "rows": _scored_rows(items, block.count)}
    return page(
        request,
        "user.html",
        who=who,
        owner=owner,
        memories=listing.memories,
        next_cursor=listing.next_cursor,
        query=query,
        result=result,
        now=utcnow(),
        notice=params.get("notice", ""),
    )


async def memory_page(
    request: Request, who: Principal, subject: str | None, memory_id: str | None, *, status: int = 200, **extra: Any
) -> Response:
    owner, memory = owner_of(request, who, subject)
    found = await memory.get(memory_id or "", include_deleted=True)
    if found is None:
        raise MemoryNotFound(memory_id or "")
    expired = found.expires_at is not None and found.expires_at <= utcnow()
    context: dict[str, Any] = {"error": None, "saved": False, **extra}
    return page(
        request,
        "memory.html",
        status,
        who=who,
        owner=owner,
        memory=found,
        expired=expired,
        kinds=KNOWN_KINDS,
        **context,
    )


@guarded
async def memory_detail(request: Request, who: Principal) -> Response:
    params = request.query_params
    return await memory_page(request, who, params.get("id"), params.get("memory"), saved=params.get("saved") == "1")
