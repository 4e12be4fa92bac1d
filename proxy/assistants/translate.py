"""Responses stream events -> Assistants stream events, one upstream event at a time.

No buffering: each upstream event is translated and sent before the next is read. The run, its
steps and messages are written to the state store as they appear, so a run being streamed can be
retrieved (and listed) from any replica meanwhile. The terminal upstream event goes through
:func:`reconcile.apply_response`, the same path polling takes, so a streamed and a polled run end in
the same records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from proxy.assistants import reconcile
from proxy.assistants.engine import Engine, messages_of
from proxy.assistants.objects import message_object, now, text_content
from proxy.assistants.run_record import RunRecord

log = logging.getLogger("memproxy.assistants")

Event = tuple[str, Any]
DONE = b"event: done\ndata: [DONE]\n\n"
FINAL_EVENTS = {
    "requires_action": "thread.run.requires_action",
    "completed": "thread.run.completed",
    "incomplete": "thread.run.incomplete",
    "failed": "thread.run.failed",
    "cancelled": "thread.run.cancelled",
    "expired": "thread.run.expired",
}


def encode(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


class RunStream:
    """Translates the upstream events of one response of ``run`` (a new run, or one resumed after tool outputs)."""

    def __init__(
        self,
        engine: Engine,
        run: RunRecord,
        upstream: AsyncIterator[dict[str, Any]],
        prelude: list[Event],
        *,
        resumed: bool = False,
    ) -> None:
        self.engine, self.run, self.upstream, self.prelude, self.resumed = engine, run, upstream, prelude, resumed
        self.response_id = ""
        self.tool_step: dict[str, Any] | None = None
        self.call_index: dict[str, int] = {}
        self.open_messages: set[str] = set()
        self.finished = False

    async def body(self) -> AsyncIterator[bytes]:
        """The SSE body: prelude, translated events, then ``event: done``."""
        try:
            for event, data in self.prelude:
                yield encode(event, data)
            async for upstream_event in self.upstream:
                for event, data in await self.translate(upstream_event):
                    yield encode(event, data)
                if self.finished:
                    break
            if not self.finished:
                for event, data in await self._fail("The upstream stream ended before the run finished."):
                    yield encode(event, data)
            yield DONE
        finally:
            closer = getattr(self.upstream, "aclose", None)
            if closer is not None:
                await closer()

    async def translate(self, event: dict[str, Any]) -> list[Event]:
        handler = getattr(self, "_on_" + event.get("type", "").replace("response.", "").replace(".", "_"), None)
        return await handler(event) if handler else []

    def _run(self, name: str) -> Event:
        return name, self.run.answer()

    # --- run lifecycle ---------------------------------------------------------------------------

    async def _on_created(self, event: dict[str, Any]) -> list[Event]:
        self.response_id = event["response"]["id"]
        self.run.response_id = self.response_id
        await reconcile.save(self.engine, self.run)
        opening = [] if self.resumed else [self._run("thread.run.created")]
        return [*opening, self._run("thread.run.queued")]

    async def _on_in_progress(self, event: dict[str, Any]) -> list[Event]:
        self.run.public["status"] = "in_progress"
        self.run.public["started_at"] = self.run.public["started_at"] or now()
        await reconcile.save(self.engine, self.run)
        return [self._run("thread.run.in_progress")]

    async def _final(self, event: dict[str, Any]) -> list[Event]:
        """The response ended: reconcile like a poll would (a tool step stays open until outputs arrive)."""
        written = await reconcile.apply_response(self.engine, self.run, event["response"])
        self.finished = True
        cut = [("thread.message.incomplete", m) for m in written if m["id"] in self.open_messages]
        return [*cut, self._run(FINAL_EVENTS[self.run.status])]

    _on_completed = _on_incomplete = _on_failed = _final

    async def _on_error(self, event: dict[str, Any]) -> list[Event]:
        return await self._fail(event.get("message") or "The upstream reported an error.", event.get("code"))

    async def _fail(self, message: str, code: str | None = None) -> list[Event]:
        self.finished = True
        reconcile.finish(self.run, "failed", {"error": {"code": code, "message": message}})
        await reconcile.save(self.engine, self.run)
        return [("error", {"message": message, "type": "server_error", "param": None, "code": code or "server_error"})]

    # --- output items --------------------------------------------------------------------------------

    async def _on_output_item_added(self, event: dict[str, Any]) -> list[Event]:
        item = event["item"]
        if item.get("type") == "message":
            return await self._message_started(item)
        if item.get("type") == "function_call":
            return await self._call_started(item)
        return []

    async def _message_started(self, item: dict[str, Any]) -> list[Event]:
        record = {
            "id": item["id"],
            "created_at": now(),
            "metadata": {},
            "run_id": self.run.id,
            "assistant_id": self.run.public["assistant_id"],
        }
        await self.engine.put(messages_of(self.run.thread_id), record)
        step = await reconcile.save_step(self.engine, self.run, reconcile.message_step(self.run, item["id"]))
        message = message_object({**item, "content": [], "status": "in_progress"}, self.run.thread_id, record)
        self.open_messages.add(item["id"])
        return [
            ("thread.run.step.created", step),
            ("thread.run.step.in_progress", step),
            ("thread.message.created", message),
            ("thread.message.in_progress", message),
        ]

    async def _call_started(self, item: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if self.tool_step is None:
            self.tool_step = reconcile.tool_step(self.run, self.response_id, [])
            await reconcile.save_step(self.engine, self.run, self.tool_step)
            events += [("thread.run.step.created", self.tool_step), ("thread.run.step.in_progress", self.tool_step)]
        index = self.call_index[item["id"]] = len(self.call_index)
        call = {
            "index": index,
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item.get("arguments") or "", "output": None},
        }
        return [*events, self._step_delta(call)]

    def _step_delta(self, call: dict[str, Any]) -> Event:
        assert self.tool_step is not None
        delta = {"step_details": {"type": "tool_calls", "tool_calls": [call]}}
        return "thread.run.step.delta", {"id": self.tool_step["id"], "object": "thread.run.step.delta", "delta": delta}

    async def _on_function_call_arguments_delta(self, event: dict[str, Any]) -> list[Event]:
        index = self.call_index.get(event["item_id"])
        if index is None:
            return []
        return [self._step_delta({"index": index, "type": "function", "function": {"arguments": event["delta"]}})]

    async def _on_output_text_delta(self, event: dict[str, Any]) -> list[Event]:
        block = {"index": event.get("content_index", 0), **text_content(event["delta"])}
        return [
            (
                "thread.message.delta",
                {"id": event["item_id"], "object": "thread.message.delta", "delta": {"content": [block]}},
            )
        ]

    async def _on_output_item_done(self, event: dict[str, Any]) -> list[Event]:
        item = event["item"]
        if item.get("type") != "message":
            return []
        self.open_messages.discard(item["id"])
        collection = messages_of(self.run.thread_id)
        record = await self.engine.records.get_record(self.engine.tenant, collection, item["id"]) or {}
        record["completed_at"] = now()
        await self.engine.put(collection, {"id": item["id"], **record})
        step = await reconcile.save_step(
            self.engine, self.run, reconcile.message_step(self.run, item["id"]), "completed"
        )
        return [
            ("thread.message.completed", message_object(item, self.run.thread_id, record)),
            ("thread.run.step.completed", step),
        ]
