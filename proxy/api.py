"""The memory REST API under /memory/v1: inspect, teach, correct, erase and export memories.

Authenticated by the same bearer credential the upstream gets: the tenant is its HMAC, so an
application reaches exactly the memories its own traffic created. With ``MEMPROXY_ADMIN_TOKEN``
an operator may name any tenant in ``X-Memory-Tenant``. With a fixed tenant (``MEMPROXY_TENANT``)
only the admin token is accepted, and without one the API is refused. Errors are OpenAI-shaped.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from proxy import audit, erasure, jsonbody
from proxy.errors import OpenAIError
from proxy.identity import credential, is_admin, memory_api_refusal, tenant_for
from proxy.memory.embed import EmbeddingError
from proxy.memory.models import Memory, ScoredMemory
from proxy.memory.render import render_block
from proxy.memory.service import MemoryNotFound, OwnerMemory
from proxy.memory.store import StoreError
from proxy.migrate import Migration, seen_threads
from proxy.observe import timed
from proxy.owner import MAX_SUBJECT, Owner, subject_problem
from proxy.ownership import credential_headers
from proxy.runtime import MemoryUnavailable, Runtime


class RememberBody(BaseModel):
    text: str = Field(min_length=1)
    kind: str = "fact"
    ttl_seconds: float | None = Field(None, gt=0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    assistant_id: str | None = None


class UpdateBody(BaseModel):
    text: str = Field(min_length=1)
    reason: str | None = None


class MigrateBody(BaseModel):
    threads: list[str] = Field(default_factory=list)
    seen: bool = False


class RecallBody(BaseModel):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=100)
    min_confidence: float | None = Field(None, ge=0, le=1)
    assistant_id: str | None = None


@dataclass
class Caller:
    """Who is asking about whom, resolved once per request: the owner and its memories."""

    runtime: Runtime
    owner: Owner
    memory: OwnerMemory
    request: Request


def resolve_tenant(request: Request, runtime: Runtime) -> str:
    """The tenant a memory API call acts in: the admin's choice, else the caller's key's.

    With a fixed tenant (``MEMPROXY_TENANT``) a key identifies no tenant, so only the admin token is
    accepted (it acts in the fixed tenant unless ``X-Memory-Tenant`` names another), and without an
    admin token nothing is.
    """
    settings = runtime.settings
    refusal = memory_api_refusal(settings)
    if refusal is not None:
        raise OpenAIError(403, refusal, code="admin_token_required")
    if is_admin(request.headers, settings):
        tenant = request.headers.get("x-memory-tenant") or settings.tenant
        if not tenant:
            raise OpenAIError(
                400, "Admin calls name the tenant in the X-Memory-Tenant header.", param="X-Memory-Tenant"
            )
        return tenant
    if settings.tenant:
        raise OpenAIError(
            401,
            "This proxy has a fixed tenant (MEMPROXY_TENANT): memory API calls need its admin token "
            "(MEMPROXY_ADMIN_TOKEN) as the bearer token.",
            code="invalid_api_key",
        )
    tenant = tenant_for(request.headers, settings, runtime.secret)
    if tenant is None:
        raise OpenAIError(
            401, "Missing bearer credential: send the API key your application uses.", code="missing_api_key"
        )
    return tenant


def endpoint(handler: Callable[[Caller], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    """Resolve the caller and run ``handler``; failures are rendered by :data:`EXCEPTION_HANDLERS`."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        tenant = resolve_tenant(request, runtime)
        if runtime.memory is None:
            raise MemoryUnavailable(runtime.problems.get("memory", "not opened"))
        subject = request.path_params.get("subject", "")
        if subject_problem(subject) is not None:
            raise OpenAIError(
                400,
                f"A subject is 1 to {MAX_SUBJECT} characters, not blank, without control characters.",
                param="subject",
                code="invalid_subject",
            )
        owner = Owner.of(runtime.secret, tenant, subject)
        result = await handler(Caller(runtime, owner, runtime.memory.of(owner), request))
        status = 201 if request.method == "POST" and request.url.path.endswith("/memories") else 200
        return result if isinstance(result, Response) else JSONResponse(result, status_code=status)

    return wrapped


async def body(caller: Caller, model: type[BaseModel]) -> Any:
    """The request's JSON body as ``model``: 413 past ``memory_max_body_bytes``, 400 when it is not JSON
    (or nested too deep, or holding too many values), 400 naming the first invalid field."""
    limit = caller.runtime.settings.memory_max_body_bytes
    try:
        raw = jsonbody.loads(await jsonbody.read_capped(caller.request, limit), strict=True)
    except jsonbody.Refused as refusal:
        status = 413 if refusal.reason == "body-too-large" else 400
        raise OpenAIError(status, str(refusal), code=refusal.reason.replace("-", "_")) from None
    except ValueError:
        raise OpenAIError(400, "We could not parse the JSON body of your request.") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise OpenAIError(400, f"Invalid request: {first['msg']}", param=param) from None


def memory_json(memory: Memory) -> dict[str, Any]:
    return memory.model_dump(mode="json", exclude={"tenant"})


def scored_json(item: ScoredMemory) -> dict[str, Any]:
    terms = {key: getattr(item, key) for key in ("similarity", "semantic", "lexical", "recency", "frequency")}
    return {"memory": memory_json(item.memory), "confidence": item.confidence, "terms": terms, "rank": item.rank}


def api_key(caller: Caller) -> str | None:
    """The caller's key, for the upstream embedder only; never stored."""
    return credential(caller.request.headers)


@endpoint
async def remember(caller: Caller) -> dict[str, Any]:
    data: RememberBody = await body(caller, RememberBody)
    if len(data.text) > caller.runtime.settings.memory_max_chars:
        raise OpenAIError(
            400, f"text is longer than {caller.runtime.settings.memory_max_chars} characters.", param="text"
        )
    ttl = timedelta(seconds=data.ttl_seconds) if data.ttl_seconds else None
    memory, action = await caller.memory.remember(
        data.text,
        kind=data.kind,
        ttl=ttl,
        metadata=data.metadata,
        assistant_id=data.assistant_id,
        api_key=api_key(caller),
    )
    return {"memory": memory_json(memory), "action": action}


@endpoint
async def list_memories(caller: Caller) -> dict[str, Any]:
    params = caller.request.query_params
    try:
        limit = min(max(int(params.get("limit", "50")), 1), 200)
    except ValueError:
        raise OpenAIError(400, "limit must be an integer.", param="limit") from None
    include_deleted = params.get("include_deleted", "false").lower() == "true"
    page = await caller.memory.list(params.get("cursor"), limit, include_deleted)
    data = [memory_json(memory) for memory in page.memories]
    return {"object": "list", "data": data, "next_cursor": page.next_cursor, "has_more": page.next_cursor is not None}


@endpoint
async def get_memory(caller: Caller) -> dict[str, Any]:
    memory_id = caller.request.path_params["memory_id"]
    memory = await caller.memory.get(memory_id, include_deleted=True)
    if memory is None:
        raise MemoryNotFound(memory_id)
    return memory_json(memory)


@endpoint
async def update_memory(caller: Caller) -> dict[str, Any]:
    data: UpdateBody = await body(caller, UpdateBody)
    memory_id = caller.request.path_params["memory_id"]
    memory = await caller.memory.update(memory_id, data.text, data.reason, api_key=api_key(caller))
    return memory_json(memory)


@endpoint
async def delete_memory(caller: Caller) -> dict[str, Any]:
    memory_id = caller.request.path_params["memory_id"]
    reason = caller.request.query_params.get("reason") or "deleted through the memory API"
    memory = await caller.memory.delete(memory_id, reason)
    return {"id": memory.id, "object": "memory.deleted", "deleted": True, "memory": memory_json(memory)}


async def _recall(caller: Caller) -> list[ScoredMemory]:
    data: RecallBody = await body(caller, RecallBody)
    search = caller.memory.recall(
        data.query,
        top_k=data.top_k,
        min_confidence=data.min_confidence,
        assistant_id=data.assistant_id,
        api_key=api_key(caller),
    )
    return await timed(caller.runtime.observer.recall, search)


@endpoint
async def recall(caller: Caller) -> dict[str, Any]:
    return {"object": "list", "data": [scored_json(item) for item in await _recall(caller)]}


@endpoint
async def context(caller: Caller) -> dict[str, Any]:
    """Exactly the block the proxy would inject for this query, and what it was made of."""
    items = await _recall(caller)
    settings = caller.runtime.settings
    block = render_block(items, budget_tokens=settings.memory_block_tokens, max_chars=settings.memory_line_chars)
    used = [scored_json(item) for item in items[: block.count]]
    return {"text": block.text, "count": block.count, "tokens": block.tokens, "memories": used}


def upstream_headers(caller: Caller) -> dict[str, str]:
    """The caller's own credential for upstream deletions; an admin's token is no upstream key."""
    settings = caller.runtime.settings
    if is_admin(caller.request.headers, settings):
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return {"authorization": f"Bearer {key}"} if key else {}
    return credential_headers(headers=caller.request.headers)


@endpoint
async def erase(caller: Caller) -> dict[str, Any]:
    """GDPR Art. 17: memories, state, pending jobs and (unless ``keep_upstream=true``) the subject's
    upstream threads and conversations, hard-deleted, audited; ``outcome`` is ``partial`` when an
    upstream deletion failed (listed in ``failed``; calling again retries it)."""
    keep = caller.request.query_params.get("keep_upstream", "false").lower() in ("true", "1", "yes")
    report = await erasure.erase_subject(
        caller.runtime, caller.owner, headers=upstream_headers(caller), keep_upstream=keep
    )
    return report.as_json()


@endpoint
async def export(caller: Caller) -> dict[str, Any]:
    """GDPR Art. 15/20: everything stored about the subject, history and tombstones included."""
    return await erasure.export_subject(caller.runtime, caller.owner)


@endpoint
async def migrate(caller: Caller) -> dict[str, Any]:
    """Mine existing threads / conversations of the subject into memories (resumable, idempotent)."""
    data: MigrateBody = await body(caller, MigrateBody)
    threads = list(data.threads)
    if data.seen:
        threads += await seen_threads(caller.runtime, caller.owner)
    if not threads:
        raise OpenAIError(400, "Name the threads to migrate in `threads`, or set `seen` to true.", param="threads")
    migration = Migration(caller.runtime, caller.owner, headers=upstream_headers(caller))
    return (await migration.run(threads)).as_json()


async def audit_log(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    tenant = resolve_tenant(request, runtime)
    items, more = await audit.entries(runtime.state, tenant, limit=100, after=request.query_params.get("after"))
    head = await audit.head(runtime.state, tenant)
    body = {"object": "list", "data": items, "has_more": more, "head": head and head.as_json(), "tenant": tenant}
    return JSONResponse(body)


async def audit_verification(request: Request) -> Response:
    """The tenant's chain checked as ``memproxy audit verify`` does; ``?head=SEQ:HASH`` kept outside."""
    runtime: Runtime = request.app.state.runtime
    tenant = resolve_tenant(request, runtime)
    kept = request.query_params.get("head")
    try:
        outside = audit.parse_head(kept) if kept else None
    except audit.BadHead as exc:
        raise OpenAIError(400, str(exc), param="head") from None
    verdict = await audit.verify(runtime.state, tenant, secret=runtime.secret, head=outside)
    return JSONResponse({**verdict.as_json(), "tenant": tenant})


def memory_routes() -> list[BaseRoute]:
    user = "/users/{subject:path}"
    return [
        Mount(
            "/memory/v1",
            routes=[
                Route("/audit", audit_log, methods=["GET"]),
                Route("/audit/verify", audit_verification, methods=["GET"]),
                Route(user + "/memories", remember, methods=["POST"]),
                Route(user + "/memories", list_memories, methods=["GET"]),
                Route(user + "/memories/{memory_id}", get_memory, methods=["GET"]),
                Route(user + "/memories/{memory_id}", update_memory, methods=["PATCH"]),
                Route(user + "/memories/{memory_id}", delete_memory, methods=["DELETE"]),
                Route(user + "/recall", recall, methods=["POST"]),
                Route(user + "/context", context, methods=["POST"]),
                Route(user + "/export", export, methods=["GET"]),
                Route(user + "/migrate", migrate, methods=["POST"]),
                Route(user, erase, methods=["DELETE"]),
            ],
        )
    ]


async def memory_error(request: Request, exc: Exception) -> Response:
    """A memory-layer failure under the memory API, as an OpenAI-shaped error."""
    if isinstance(exc, MemoryNotFound):
        failure = OpenAIError(404, f"No memory found with id '{exc}'.", code="memory_not_found")
    elif isinstance(exc, MemoryUnavailable):
        failure = OpenAIError(503, "The memory layer is unavailable; see /readyz.", code="memory_unavailable")
    else:
        failure = OpenAIError(503, f"The memory layer failed: {type(exc).__name__}.", type="server_error")
    return JSONResponse(failure.envelope(), status_code=failure.status)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    error: memory_error for error in (MemoryNotFound, MemoryUnavailable, EmbeddingError, StoreError)
}
"""What the memory API's failures look like to a client; installed by the app."""
