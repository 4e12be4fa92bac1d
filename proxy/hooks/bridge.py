"""Memory inside the Assistants bridge, and the bridge's wiring onto the proxy's runtime.

The engine asks :class:`MemoryRunHooks`, no HTTP rewriting needed. Same identity rules, modes and recall
as passthrough (header, the run's then the thread's metadata, else the thread itself), same block,
appended to the run's instructions by the engine, same ``x-memory-*`` headers on every answer; a run
that reaches ``completed`` becomes one extraction job, whichever replica sees it finish, for the owner
and in the mode its creation found (kept with the run record). :func:`bridge_routes` builds, per request, an engine
over the proxy's state store and the upstream with the caller's key: ``proxy/assistants/`` itself
never sees the runtime.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute

from proxy.assistants import messages
from proxy.assistants.engine import Engine
from proxy.assistants.hooks import RunContext, RunHooks
from proxy.assistants.routes import NO_KEY, assistants_routes
from proxy.assistants.upstream import HttpUpstream
from proxy.errors import OpenAIError
from proxy.hooks.capture import queue
from proxy.hooks.recall import Identified, RequestMemory, choice_of, identify, recall, switched_off
from proxy.identity import subject_for, tenant_for
from proxy.learn.turn import Turn, message_text
from proxy.ownership import record_thread
from proxy.runtime import Runtime, StateUnavailable

RECENT = 5


class MemoryRunHooks(RunHooks):
    def __init__(self, runtime: Runtime, request: Request) -> None:
        self.runtime, self.request = runtime, request
        self.engine: Engine | None = None
        self.memory: RequestMemory | None = None
        self.user: list[str] = []

    def _identify(self, ctx: RunContext) -> RequestMemory:
        """Whose run: the subject its creation found (kept with the run), else the rule of :mod:`proxy.hooks.subjects`."""
        settings, headers = self.runtime.settings, self.request.headers
        kept = ctx.kept.get("subject")
        subject = (
            kept
            if isinstance(kept, str)
            else subject_for(headers, settings, {"metadata": ctx.run_metadata})
            or subject_for(headers, settings, {"metadata": ctx.thread_metadata})
            or f"thread:{ctx.thread_id}"
        )
        return identify(self.request, self.runtime, subject)

    def headers(self) -> dict[str, str]:
        """What memory did for this request: a run's recall, else nothing (``off``, or why it is off)."""
        memory = self.memory if self.memory is not None else switched_off(self.request, self.runtime)
        return memory.headers()

    async def _latest_user_texts(self, ctx: RunContext) -> list[str]:
        """This run's new user messages, else the thread's latest ones."""
        texts = [message_text(m.get("content")) for m in ctx.new_messages]
        if texts or self.engine is None:
            return [text for text in texts if text.strip()]
        params = {"limit": RECENT, "order": "desc", "after": None, "before": None}
        page = await messages.list_all(self.engine, ctx.thread_id, params)
        recent = [message_text(m.get("content")) for m in page["data"] if m.get("role") == "user"]
        return list(reversed(recent[:2]))

    async def before_run(self, ctx: RunContext) -> str | None:
        self.memory = memory = self._identify(ctx)
        if not isinstance(memory, Identified):
            ctx.kept["capture"] = False  # nobody to learn for: a later poll must not find one
            return None
        # the run's owner and mode, for the poll that sees it finish (its own headers may name no one)
        ctx.kept.update(subject=memory.owner.subject, capture=memory.choice.captures)
        await record_thread(self.runtime.state, memory.owner, ctx.thread_id, self.runtime.route)  # erasure finds it
        self.user = await self._latest_user_texts(ctx)
        self.memory = memory = await recall(self.runtime, memory, "\n".join(self.user), assistant_id=ctx.assistant_id)
        return memory.block or None

    async def after_run(self, ctx: RunContext, run: dict[str, Any], written: list[dict[str, Any]]) -> None:
        memory = self.memory or self._identify(ctx)
        if not isinstance(memory, Identified) or run.get("status") != "completed":
            return
        if not (ctx.kept.get("capture", True) and choice_of(self.request, self.runtime).captures):
            return  # X-Memory: read on the run's creation, or on the request that sees it finish
        user = self.user or await self._latest_user_texts(ctx)
        answer = [message_text(m.get("content")) for m in written if m.get("role") == "assistant"]
        source = {
            "thread_id": ctx.thread_id,
            "run_id": run["id"],
            "assistant_id": ctx.assistant_id,
            "message_ids": [m["id"] for m in written if m.get("id")],
        }
        await queue(
            self.runtime,
            Turn(memory.owner, "assistants", run["id"], user, answer, source, run.get("model"), started_at=memory.at),
        )


async def bridge_engine(request: Request) -> Engine:
    """The bridge's engine: the caller's tenant, the proxy's state store, the upstream with the caller's key.

    Memory acts through :class:`MemoryRunHooks`, built per request (it needs the caller's headers:
    ``X-Memory-User``, ``X-Memory: off``, the key for the upstream embedder).
    """
    runtime: Runtime = request.app.state.runtime
    tenant = tenant_for(request.headers, runtime.settings, runtime.secret)
    if tenant is None:
        raise OpenAIError(401, NO_KEY, code="missing_api_key")
    try:
        state = runtime.state
    except StateUnavailable:  # the bridge keeps assistants, threads and runs there: nothing to serve from
        raise OpenAIError(
            503,
            "The Assistants bridge keeps assistants, threads and runs in memproxy's state store, which is "
            "unavailable right now; retry later.",
            type="server_error",
            code="state_unavailable",
        ) from None
    upstream = HttpUpstream(runtime.http, runtime.settings.upstream_url, request.headers)
    hooks = MemoryRunHooks(runtime, request)
    engine = Engine(state, upstream, tenant, hooks)
    hooks.engine = engine  # to read the thread's latest messages when a run brings none
    return engine


def bridge_routes() -> list[BaseRoute]:
    """Mounted by ``proxy.app`` ahead of plain forwarding when ``assistants_mode == "bridge"``."""
    return assistants_routes(bridge_engine, poll_after_ms=500)
