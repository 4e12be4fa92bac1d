"""The before-hook shared by every route: who is asking, what to recall, within a deadline.

Memory is an enhancement and the upstream call is the product: any failure or slowness here
sends the request upstream unchanged, marked ``x-memory-status: degraded``, counted, and logged
with its cause (never with the query or a key).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.forward import Tap
from proxy.identity import credential, subject_hash, tenant_for
from proxy.memory.render import render_block
from proxy.observe import timed
from proxy.runtime import Runtime

log = logging.getLogger("memproxy.hooks")


@dataclass
class RequestMemory:
    """What the before-hook decided for one request; its headers go back to the client."""

    status: str  # ok | none | off | degraded
    tenant: str | None = None
    subject: str | None = None
    subject_hash: str | None = None
    block: str = ""
    recalled: int = 0
    api_key: str | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ("ok", "none", "degraded") and self.subject is not None

    def headers(self) -> dict[str, str]:
        headers = {"x-memory-status": self.status, "x-memory-recalled": str(self.recalled)}
        if self.subject_hash:
            headers["x-memory-subject"] = self.subject_hash
        return headers


OFF = RequestMemory("off")


async def read_json(request: Request) -> dict[str, Any] | None:
    """The body when it is a JSON object, else None: malformed JSON is the upstream's to judge."""
    try:
        parsed = json.loads(await request.body())
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def tenant_of(request: Request, runtime: Runtime) -> str | None:
    """The tenant memory would act for, or None when memory is off for this request."""
    if request.headers.get("x-memory", "").lower() == "off":
        return None
    return tenant_for(request.headers, runtime.settings, runtime.secret)


def identify(request: Request, runtime: Runtime, subject: str | None) -> RequestMemory:
    """Tenant and subject, or OFF when memory is switched off, unidentified or unavailable."""
    tenant = tenant_of(request, runtime)
    if tenant is None or subject is None:
        return OFF
    hashed = subject_hash(runtime.secret, tenant, subject)
    if runtime.memory is None:
        return RequestMemory("degraded", tenant, subject, hashed)
    api_key = credential(request.headers)
    runtime.keys.remember(tenant, api_key)  # process memory only: this tenant's extraction jobs need it
    return RequestMemory("none", tenant, subject, hashed, api_key=api_key)


async def recall(runtime: Runtime, memory: RequestMemory, query: str, assistant_id: str | None = None) -> RequestMemory:
    """Fill ``memory.block`` from the subject's memories relevant to ``query``, within the deadline."""
    if not memory.active or memory.status == "degraded" or not query.strip() or runtime.memory is None:
        return memory
    settings = runtime.settings
    search = runtime.memory.recall(
        memory.tenant, memory.subject, query, assistant_id=assistant_id, api_key=memory.api_key
    )
    try:
        items = await timed(
            runtime.observer.recall, asyncio.wait_for(search, settings.memory_recall_deadline_ms / 1000)
        )
    except Exception as exc:  # noqa: BLE001 - fail open whatever broke: the request must go on
        return degrade(runtime, memory, "recall_timeout" if isinstance(exc, TimeoutError) else "recall_error", exc)
    block = render_block(items, budget_tokens=settings.memory_block_tokens, max_chars=settings.memory_line_chars)
    memory.block, memory.recalled = block.text, block.count
    memory.status = "ok" if block.count else "none"
    return memory


def degrade(runtime: Runtime, memory: RequestMemory, cause: str, exc: BaseException | None = None) -> RequestMemory:
    runtime.count(f"degraded.{cause}")
    log.warning("memory degraded (%s): %s", cause, type(exc).__name__ if exc else "-")
    memory.status = "degraded"
    return memory


def append_text(existing: Any, block: str) -> str:
    """The client's own instructions first, never replaced; the block after a blank line."""
    if isinstance(existing, str) and existing.strip():
        return f"{existing}\n\n{block}"
    return block


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Plan:
    """What a before-hook decided: the body to send (None: the client's, untouched), headers, tap."""

    body: bytes | None = None
    memory: RequestMemory = field(default_factory=lambda: RequestMemory("off"))
    tap: Tap | None = None


Planner = Callable[[Request, Runtime, dict[str, Any] | None], Awaitable[Plan]]


def hooked(planner: Planner) -> Callable[[Request], Awaitable[Response]]:
    """A route whose memory work can fail in any way without the client noticing beyond a header."""

    async def endpoint(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        body = await read_json(request)
        try:
            plan = await planner(request, runtime, body)
        except Exception as exc:  # noqa: BLE001 - fail open: the original request goes upstream
            plan = Plan(memory=degrade(runtime, RequestMemory("degraded"), "hook_error", exc))
        return await runtime.forwarder.forward(request, plan.body, tap=plan.tap, headers=plan.memory.headers())

    endpoint.__name__ = endpoint.__qualname__ = planner.__name__
    return endpoint
