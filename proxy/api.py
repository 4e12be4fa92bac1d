"""The memory REST API under /memory/v1: inspect, teach, correct, erase and export memories.

Authenticated by the same bearer credential the upstream gets: the tenant is its HMAC, so an
application reaches exactly the memories its own traffic created. With ``MEMPROXY_ADMIN_TOKEN``
an operator may name any tenant in ``X-Memory-Tenant``. With a fixed tenant (``MEMPROXY_TENANT``)
only the admin token is accepted, and without one the API is refused. Errors are OpenAI-shaped.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from proxy import audit, erasure, jsonbody
from proxy.errors import OpenAIError
from proxy.identity import is_admin, memory_api_refusal, tenant_for, upstream_key
from proxy.ids import is_id
from proxy.memory.embed import EmbeddingError
from proxy.memory.models import KNOWN_KINDS, Memory, ScoredMemory, check_kind
from proxy.memory.render import render_block
from proxy.memory.service import MemoryNotFound, OwnerMemory
from proxy.memory.store import StoreError
from proxy.migrate import Migration, seen_threads
from proxy.observe import timed
from proxy.owner import MAX_SUBJECT, Owner, subject_problem
from proxy.ownership import credential_headers
from proxy.runtime import MemoryUnavailable, Runtime
from proxy.state import UnknownCursor

# --- bounds of what a client may send (README, "Memory API"); beyond them a 400 naming the field -----

MIN_TTL_SECONDS = 0.001
MAX_TTL_SECONDS = 100 * 365 * 86400
"""A memory expires after 1 millisecond to 100 years; without ``ttl_seconds`` its kind's default applies."""
MAX_REASON_CHARS = 1000
"""Longest reason of an update (PATCH ``reason``) or a deletion (``?reason=``), kept with the memory."""
MAX_METADATA_BYTES = 16 * 1024
"""Largest ``metadata``, as compact UTF-8 JSON: it is stored with the memory and returned on every read."""
MAX_METADATA_DEPTH = 8
"""Deepest ``metadata``: the object itself is level 1."""
MAX_LIST_LIMIT = 200
MAX_CURSOR_CHARS = 64
MAX_AUDIT_CURSOR_CHARS = 64
MAX_HEAD_CHARS = 128
MAX_MIGRATE_THREADS = 1000
_AUDIT_CURSOR = re.compile(r"[A-Za-z0-9_-]+")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text must not be blank")
    return text


def _kind(kind: str) -> str:
    if len(kind) > 32:  # check_kind echoes the value: never a long one
        raise ValueError(f"kind must be a lowercase identifier of at most 32 characters ({', '.join(KNOWN_KINDS)})")
    return check_kind(kind)


def _openai_id(value: str | None) -> str | None:
    if value is not None and not is_id(value):
        raise ValueError("assistant_id must be an OpenAI id: letters, digits, _ and -, at most 128")
    return value


def nesting(value: Any, limit: int) -> int:
    """How deep ``value`` nests (a scalar 0, ``{}`` 1), walked without recursion; stops once past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if nesting(value, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
    if len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return value


class RememberBody(BaseModel):
    text: str = Field(min_length=1)
    kind: str = "fact"
    ttl_seconds: float | None = Field(None, ge=MIN_TTL_SECONDS, le=MAX_TTL_SECONDS, allow_inf_nan=False)
    metadata: dict[str, Any] = Field(default_factory=dict)
    assistant_id: str | None = None

    _valid_text = field_validator("text")(_not_blank)
    _valid_kind = field_validator("kind")(_kind)
    _valid_metadata = field_validator("metadata")(_metadata)
    _valid_assistant = field_validator("assistant_id")(_openai_id)


class UpdateBody(BaseModel):
    text: str = Field(min_length=1)
    reason: str | None = Field(None, max_length=MAX_REASON_CHARS)

    _valid_text = field_validator("text")(_not_blank)


class MigrateBody(BaseModel):
    threads: list[str] = Field(default_factory=list, max_length=MAX_MIGRATE_THREADS)
    seen: bool = False


class RecallBody(BaseModel):
    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=100)
    min_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    assistant_id: str | None = None

    _valid_assistant = field_validator("assistant_id")(_openai_id)


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


def check_text(caller: Caller, text: str) -> None:
    limit = caller.runtime.settings.memory_max_chars
    if len(text) > limit:
        raise OpenAIError(400, f"text is longer than {limit} characters.", param="text")


def check_reason(reason: str | None) -> None:
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise OpenAIError(400, f"reason is longer than {MAX_REASON_CHARS} characters.", param="reason")


def memory_json(memory: Memory) -> dict[str, Any]:
    return memory.model_dump(mode="json", exclude={"tenant"})


def scored_json(item: ScoredMemory) -> dict[str, Any]:
    terms = {key: getattr(item, key) for key in ("similarity", "semantic", "lexical", "recency", "frequency")}
    return {"memory": memory_json(item.memory), "confidence": item.confidence, "terms": terms, "rank": item.rank}


def api_key(caller: Caller) -> str | None:
    """The key for the upstream embedder (never the admin token); never stored."""
    return upstream_key(caller.request.headers, caller.runtime.settings)


@endpoint
async def remember(caller: Caller) -> dict[str, Any]:
    data: RememberBody = await body(caller, RememberBody)
    check_text(caller, data.text)
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
    limit = list_limit(params.get("limit", "50"))
    include_deleted = params.get("include_deleted", "false").lower() == "true"
    page = await caller.memory.list(list_cursor(params.get("cursor")), limit, include_deleted)
    data = [memory_json(memory) for memory in page.memories]
    return {"object": "list", "data": data, "next_cursor": page.next_cursor, "has_more": page.next_cursor is not None}


def list_limit(raw: str) -> int:
    if raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_LIST_LIMIT:
        return int(raw)
    raise OpenAIError(400, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", param="limit")


def list_cursor(cursor: str | None) -> str | None:
    """A ``next_cursor`` as the list handed it out (a memory id); anything else is a 400, never the store's."""
    if not cursor:
        return None
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError
        return str(uuid.UUID(cursor))
    except ValueError:
        raise OpenAIError(
            400, "cursor must be a next_cursor of this list.", param="cursor", code="invalid_cursor"
        ) from None


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
    check_text(caller, data.text)
    memory_id = caller.request.path_params["memory_id"]
    memory = await caller.memory.update(memory_id, data.text, data.reason, api_key=api_key(caller))
    return memory_json(memory)


@endpoint
async def delete_memory(caller: Caller) -> dict[str, Any]:
    memory_id = caller.request.path_params["memory_id"]
    reason = caller.request.query_params.get("reason") or "deleted through the memory API"
    check_reason(reason)
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
    if is_admin(caller.request.headers, caller.runtime.settings):
        key = api_key(caller)
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
    after = request.query_params.get("after")
    bad_after = OpenAIError(400, "after must be the id of an audit entry.", param="after", code="invalid_cursor")
    if after is not None and (len(after) > MAX_AUDIT_CURSOR_CHARS or not _AUDIT_CURSOR.fullmatch(after)):
        raise bad_after
    try:
        items, more = await audit.entries(runtime.state, tenant, limit=100, after=after)
    except UnknownCursor:
        raise bad_after from None
    head = await audit.head(runtime.state, tenant)
    body = {"object": "list", "data": items, "has_more": more, "head": head and head.as_json(), "tenant": tenant}
    return JSONResponse(body)


async def audit_verification(request: Request) -> Response:
    """The tenant's chain checked as ``memproxy audit verify`` does; ``?head=SEQ:HASH`` kept outside."""
    runtime: Runtime = request.app.state.runtime
    tenant = resolve_tenant(request, runtime)
    kept = request.query_params.get("head")
    if kept and len(kept) > MAX_HEAD_CHARS:
        raise OpenAIError(400, f"head is SEQ:HASH, at most {MAX_HEAD_CHARS} characters.", param="head")
    try:
        outside = audit.parse_head(kept) if kept else None
    except ValueError as exc:  # BadHead, or a SEQ too long for an int
        message = str(exc) if isinstance(exc, audit.BadHead) else "head is SEQ:HASH."
        raise OpenAIError(400, message, param="head") from None
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
    if isinstance(exc, MemoryNotFound):  # the id echoed, never at any length
        failure = OpenAIError(404, f"No memory found with id '{str(exc)[:64]}'.", code="memory_not_found")
    elif isinstance(exc, MemoryUnavailable):
        failure = OpenAIError(503, "The memory layer is unavailable; see /readyz.", code="memory_unavailable")
    else:
        failure = OpenAIError(503, f"The memory layer failed: {type(exc).__name__}.", type="server_error")
    return JSONResponse(failure.envelope(), status_code=failure.status)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    error: memory_error for error in (MemoryNotFound, MemoryUnavailable, EmbeddingError, StoreError)
}
"""What the memory API's failures look like to a client; installed by the app."""
