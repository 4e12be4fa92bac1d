"""Memory inside the Assistants bridge: the engine asks these hooks, no HTTP rewriting needed.

Same identity rules and recall as passthrough (header, the run's then the thread's metadata,
else the thread itself), same block, appended to the run's instructions by the engine; a run that
reaches ``completed`` becomes one extraction job, whichever replica sees it finish.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from proxy.assistants import messages
from proxy.assistants.engine import Engine
from proxy.assistants.hooks import RunContext, RunHooks
from proxy.erasure import record_thread
from proxy.hooks.capture import message_text, queue
from proxy.hooks.recall import RequestMemory, identify, recall
from proxy.identity import subject_for
from proxy.runtime import Runtime
from proxy.turns import Turn

RECENT = 5


class MemoryRunHooks(RunHooks):
    def __init__(self, runtime: Runtime, request: Request) -> None:
        self.runtime, self.request = runtime, request
        self.engine: Engine | None = None
        self.memory: RequestMemory | None = None
        self.user: list[str] = []

    def _identify(self, ctx: RunContext) -> RequestMemory:
        settings, headers = self.runtime.settings, self.request.headers
        subject = (
            subject_for(headers, settings, {"metadata": ctx.run_metadata})
            or subject_for(headers, settings, {"metadata": ctx.thread_metadata})
            or f"thread:{ctx.thread_id}"
        )
        return identify(self.request, self.runtime, subject)

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
        memory = self._identify(ctx)
        if not memory.active:
            return None
        if not memory.subject.startswith("thread:"):  # a named user's thread: erasure must find it
            await record_thread(self.runtime, memory.tenant, memory.subject, ctx.thread_id)
        self.user = await self._latest_user_texts(ctx)
        self.memory = await recall(self.runtime, memory, "\n".join(self.user), assistant_id=ctx.assistant_id)
        return self.memory.block or None

    async def after_run(self, ctx: RunContext, run: dict[str, Any], written: list[dict[str, Any]]) -> None:
        memory = self.memory or self._identify(ctx)
        if not memory.active or run.get("status") != "completed":
            return
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
            Turn(memory.tenant, memory.subject, "assistants", run["id"], user, answer, source, run.get("model")),
        )
