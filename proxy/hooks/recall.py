"""The before-hook shared by every route: who is asking, what to recall, within a deadline.

Memory is an enhancement and the upstream call is the product: any failure or slowness here
sends the request upstream unchanged, marked ``x-memory-status: degraded``, counted, and logged
with its cause (never with the query or a key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response

from proxy import jsonbody, tracing
from proxy.forward import Tap
from proxy.hooks.modes import Choice, choose
from proxy.hooks.rewrite import REWRITE_SHARE, rewritten
from proxy.identity import credential, tenant_for
from proxy.memory.render import render_block
from proxy.observe import timed
from proxy.owner import Owner, subject_problem
from proxy.runtime import Runtime

log = logging.getLogger("memproxy.hooks")


Status = Literal["ok", "none", "off", "degraded"]

ADMIT_SHARE = 0.5
"""A recall is shed when the embedder's queue alone would take more than this share of its deadline: the
rest is for the search, the scoring and the wait for the event loop under the same load."""


@dataclass(frozen=True, slots=True)
class Off:
    """Memory does not act on this request: switched off, no credential or subject, or the hook failed.

    ``reason`` (sent as ``x-memory-reason``) says why when the client can fix it, e.g. a subject the
    memory API could not address (:func:`proxy.owner.subject_problem`; never the subject itself), or a
    body beyond the bounds of :mod:`proxy.jsonbody` (``body-too-large``, ``body-too-deep``, ``body-too-complex``).
    """

    status: Literal["off", "degraded"] = "off"
    reason: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"x-memory-status": self.status, "x-memory-recalled": "0"}
        if self.reason is not None:
            headers["x-memory-reason"] = self.reason
        return headers


@dataclass(frozen=True, slots=True)
class Identified:
    """Memory acts for ``owner``: what recall found (``block``), and the status the client is told.

    ``choice`` is what the request asked (``X-Memory``, ``X-Memory-Budget``): whether it recalls, is
    learned, and the block's budget; its reasons (a budget not taken as sent) go to ``x-memory-reason``.
    """

    owner: Owner
    status: Status = "none"
    block: str = ""
    recalled: int = 0
    api_key: str | None = field(default=None, repr=False)
    at: float = field(default_factory=time.time)
    """When the request arrived: the turn's start, which an erasure from then on fences."""
    choice: Choice = field(default_factory=Choice)

    def headers(self) -> dict[str, str]:
        headers = {
            "x-memory-status": self.status,
            "x-memory-recalled": str(self.recalled),
            "x-memory-subject": self.owner.hash,
            "x-memory-mode": self.choice.mode,
        }
        if self.choice.reasons:
            headers["x-memory-reason"] = ", ".join(self.choice.reasons)
        return headers


RequestMemory = Off | Identified
"""What the before-hook decided for one request: immutable, so one request can never change another's."""

OFF = Off()
FAILED = Off("degraded")


THREAD_PARSE_BYTES = 256 * 1024
"""Bodies larger than this are measured and parsed on a worker thread, not on the event loop."""


async def read_json(request: Request, max_bytes: int) -> dict[str, Any] | None:
    """The body when it is a JSON object the hook can handle, else None: malformed JSON is the upstream's to judge.

    Raises :class:`~proxy.jsonbody.Refused` for a body beyond the bounds (larger than ``max_bytes``,
    nested too deep, too many values): the caller forwards it untouched, without memory. A body whose
    ``Content-Length`` is over the limit is not even read here: it streams upstream as it arrives.
    """
    if jsonbody.declared_too_large(request, max_bytes):
        raise jsonbody.too_large(max_bytes)
    raw = await request.body()  # kept by the request: forwarding sends these bytes when the hook changes nothing
    if len(raw) > max_bytes:
        raise jsonbody.too_large(max_bytes)
    try:
        if len(raw) > THREAD_PARSE_BYTES:
            parsed = await asyncio.to_thread(jsonbody.loads, raw)
        else:
            parsed = jsonbody.loads(raw)
    except jsonbody.Refused:
        raise
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def choice_of(request: Request, runtime: Runtime) -> Choice:
    """What the request's ``X-Memory`` and ``X-Memory-Budget`` ask (:mod:`proxy.hooks.modes`).

    Read once per request; a header not taken as sent is counted then (``memory_off.invalid-mode``,
    ``memory_budget.<reason>``), and an invalid mode logged.
    """
    known = getattr(request.state, "memory_choice", None)
    if isinstance(known, Choice):
        return known
    settings = runtime.settings
    choice = choose(request.headers, settings.memory_block_tokens, settings.memory_block_tokens_max)
    request.state.memory_choice = choice
    for reason in choice.reasons:
        runtime.count(f"memory_off.{reason}" if reason == "invalid-mode" else f"memory_budget.{reason}")
    if choice.mode == "off" and choice.reasons:
        log.warning("memory off for this request: X-Memory is none of on, read, write, off")
    return choice


def tenant_of(request: Request, runtime: Runtime) -> str | None:
    """The tenant memory would act for, or None when memory is off for this request."""
    if choice_of(request, runtime).mode == "off":
        return None
    return tenant_for(request.headers, runtime.settings, runtime.secret)


def switched_off(request: Request, runtime: Runtime) -> Off:
    """OFF, or, when ``X-Memory`` was no mode, OFF saying so (``x-memory-reason: invalid-mode``)."""
    reasons = choice_of(request, runtime).reasons
    return Off(reason=", ".join(reasons)) if "invalid-mode" in reasons else OFF


def refused(request: Request, runtime: Runtime, refusal: jsonbody.Refused) -> RequestMemory:
    """No memory for a body beyond the bounds: OFF when memory would not act anyway, else the reason."""
    if tenant_of(request, runtime) is None:
        return switched_off(request, runtime)
    runtime.count(f"memory_off.{refusal.reason}")
    log.warning("memory off for this request: %s", refusal.reason)
    return Off(reason=refusal.reason)


def identify(request: Request, runtime: Runtime, subject: str | None) -> RequestMemory:
    """The request's owner, or OFF when memory is switched off or the request names no one.

    A subject the memory API could not address (too long, blank, control characters) gets no memory,
    so nothing is stored that the API could not list, export or erase; the request itself goes on
    untouched, with the reason in ``x-memory-reason``, counted and logged without the value.
    """
    tenant = tenant_of(request, runtime)
    if tenant is None:
        return switched_off(request, runtime)
    if subject is None:
        return OFF
    problem = subject_problem(subject)
    if problem is not None:
        runtime.count(f"memory_off.{problem}")
        log.warning("memory off for this request: %s (%d characters)", problem, len(subject))
        return Off(reason=problem)
    owner, choice = Owner.of(runtime.secret, tenant, subject), choice_of(request, runtime)
    if runtime.memory is None:
        return Identified(owner, "degraded", choice=choice)
    api_key = credential(request.headers)
    runtime.keys.remember(tenant, api_key)  # process memory only: this tenant's extraction jobs need it
    return Identified(owner, api_key=api_key, choice=choice)


async def recall(
    runtime: Runtime, memory: Identified, query: str, assistant_id: str | None = None, *, previous: str = ""
) -> Identified:
    """``memory`` with the owner's memories relevant to ``query`` as its block, found within the deadline.

    With ``MEMPROXY_MEMORY_QUERY_REWRITE``, ``query`` and the user's ``previous`` turn are first rewritten
    into one standalone query by the upstream model, within part of the deadline (:mod:`.rewrite`).
    Nothing is looked up when the request does not recall (``X-Memory: write``, a budget of 0).
    """
    if memory.status == "degraded" or not memory.choice.recalls or not query.strip():
        return memory
    settings, service = runtime.settings, runtime.memory
    if service is None:
        return memory
    if service.store.paused:  # optimizing: its calls wait seconds, the recall would only reach its deadline
        report_fault(runtime, "recall_store_paused")
        return replace(memory, status="degraded")
    deadline = settings.memory_recall_deadline_ms / 1000
    if service.embedder.expected_wait() > deadline * ADMIT_SHARE:
        # Overloaded: this query would wait past its deadline behind the queries already queued, and
        # cost the model a run that no one reads. Going on at once keeps the queue short enough that
        # the queries already in it finish in time (a shed request is degraded, like a timeout).
        report_fault(runtime, "recall_overloaded")
        return replace(memory, status="degraded")
    with tracing.span("memproxy.recall", {"memproxy.recall.budget": memory.choice.budget}) as span:
        started = time.monotonic()
        query = await rewritten(runtime, query, previous, memory.api_key, deadline * REWRITE_SHARE)
        search = service.of(memory.owner).recall(query, assistant_id=assistant_id, api_key=memory.api_key)
        try:
            left = deadline - (time.monotonic() - started)
            items = await timed(runtime.observer.recall, asyncio.wait_for(search, left))
        except Exception as exc:  # noqa: BLE001 - fail open whatever broke: the request must go on
            cause = "recall_timeout" if isinstance(exc, TimeoutError) else "recall_error"
            report_fault(runtime, cause, exc)
            if span is not None:
                span.set_attribute("memproxy.degraded", cause)
            return replace(memory, status="degraded")
        with tracing.span("memproxy.render", {"memproxy.render.candidates": len(items)}):
            block = render_block(items, budget_tokens=memory.choice.budget, max_chars=settings.memory_line_chars)
        if span is not None:
            span.set_attribute("memproxy.recalled", block.count)
    return replace(memory, block=block.text, recalled=block.count, status="ok" if block.count else "none")


FAULT_LOG_INTERVAL = 1.0
"""Seconds between two log lines of one fault cause; the faults in between are counted on the next line."""
_fault_lines: dict[str, tuple[float, int]] = {}  # cause -> (when its last line was logged, faults since)


def report_fault(runtime: Runtime, cause: str, exc: BaseException | None = None) -> None:
    """Count and log a memory-layer fault (never its query, text or key); the request goes on.

    Every fault is counted (``memproxy_degraded_total``); the log gets one line per cause per
    :data:`FAULT_LOG_INTERVAL` at most, with how many more there were: an overload that sheds
    hundreds of recalls a second must not also spend its CPU writing hundreds of lines.
    """
    runtime.count(f"degraded.{cause}")
    now = time.monotonic()
    logged, since = _fault_lines.get(cause, (-FAULT_LOG_INTERVAL, 0))
    if now - logged < FAULT_LOG_INTERVAL:
        _fault_lines[cause] = (logged, since + 1)
        return
    _fault_lines[cause] = (now, 0)
    more = f" (and {since} more since the last line)" if since else ""
    log.warning("memory degraded (%s): %s%s", cause, type(exc).__name__ if exc else "-", more)


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
    memory: RequestMemory = OFF
    tap: Tap | None = None


Planner = Callable[[Request, Runtime, dict[str, Any] | None], Awaitable[Plan]]


def hooked(planner: Planner) -> Callable[[Request], Awaitable[Response]]:
    """A route whose memory work can fail in any way without the client noticing beyond a header."""

    async def endpoint(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        try:
            body = await read_json(request, runtime.settings.memory_max_body_bytes)
        except jsonbody.Refused as refusal:  # forwarded untouched (a body over the size limit unread)
            plan = Plan(memory=refused(request, runtime, refusal))
        else:
            try:
                plan = await planner(request, runtime, body)
            except Exception as exc:  # noqa: BLE001 - fail open: the original request goes upstream
                report_fault(runtime, "hook_error", exc)
                plan = Plan(memory=FAILED)
        tap = plan.tap if choice_of(request, runtime).captures else None  # X-Memory: read learns nothing
        memory = switched_off(request, runtime) if plan.memory is OFF else plan.memory  # an invalid X-Memory says so
        return await runtime.forwarder.forward(request, plan.body, tap=tap, headers=memory.headers())

    endpoint.__name__ = endpoint.__qualname__ = planner.__name__
    return endpoint
