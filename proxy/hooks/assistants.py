"""Assistants passthrough: memory around threads and runs served by an upstream that speaks v2.

What the proxy learns on the way (thread -> subject, the thread's latest user messages, runs
waiting to finish) goes to the state store, shared by replicas, so a run needs no extra upstream
call; on a miss, one GET of the thread or its messages fills the gap. Recall goes into
``additional_instructions`` (runs) or ``instructions`` (create-and-run: the client's override, else
the assistant's own, fetched once and cached). A finished run becomes one extraction job, whether
the client streamed it or polled it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from proxy.hooks.capture import TurnTap, event_json, park, parked, queue, redacted_texts, started_of, unpark
from proxy.hooks.recall import (
    Identified,
    Plan,
    append_text,
    encode,
    hooked,
    identify,
    recall,
    tenant_of,
)
from proxy.hooks.subjects import named_user
from proxy.identity import subject_for
from proxy.ids import check_id, upstream_path
from proxy.learn.turn import Turn, message_text
from proxy.owner import Owner
from proxy.ownership import record_thread
from proxy.runtime import Runtime
from proxy.sse import Event

RECENT = 10
THREAD_TTL = 30 * 86400.0
PENDING = "pending_run"
ASSISTANT_TTL = 600.0


def user_texts(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    texts = [message_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return [text for text in texts if text.strip()]


async def remember_thread(runtime: Runtime, owner: Owner, thread_id: str, texts: list[str]) -> None:
    """Keep what later runs of this thread need: whose it is and what the user said last."""
    mine = runtime.state.tenant(owner.tenant)
    await record_thread(runtime.state, owner, thread_id, runtime.route)  # erasure deletes it, whoever its owner is
    if not owner.subject.startswith("thread:"):
        await mine.set("thread_subject", thread_id, owner.subject, ttl=THREAD_TTL, subject=owner)
    if texts:  # kept until the thread's next run: markers, never a secret the user typed
        texts = await redacted_texts(runtime, texts)
        await mine.list_push("thread_user", thread_id, *texts, max_len=RECENT, ttl=THREAD_TTL, subject=owner)


async def thread_subject(request: Request, runtime: Runtime, body: dict[str, Any], thread_id: str) -> str:
    """Header, the run's metadata, the thread's (remembered, else fetched once), else the thread itself."""
    direct = subject_for(request.headers, runtime.settings, body)
    if direct:
        return direct
    path = upstream_path("/threads/{t}", t=thread_id)
    return await named_user(request, runtime, "thread_subject", thread_id, path) or f"thread:{thread_id}"


async def recent_user_texts(request: Request, runtime: Runtime, owner: Owner, thread_id: str) -> list[str]:
    known = await runtime.state.tenant(owner.tenant).list_range("thread_user", thread_id, -2, -1)
    if known:
        return [str(text) for text in known]
    path = upstream_path("/threads/{t}/messages", t=thread_id)
    listing = await runtime.forwarder.fetch_json(request, path, {"limit": 5, "order": "desc"})
    messages = listing.get("data", []) if isinstance(listing, dict) else []
    return list(reversed(user_texts(messages)))[-2:]


# --- taps ------------------------------------------------------------------------------------------


def run_from(data: Any) -> dict[str, Any] | None:
    """The run object: the JSON body, or the last ``thread.run.*`` event of a stream."""
    if isinstance(data, dict):
        return data
    for event in reversed(data):
        if isinstance(event, Event) and event.event.startswith("thread.run.") and ".step." not in event.event:
            payload = event_json(event)
            return payload if isinstance(payload, dict) else None
    return None


def streamed_answer(events: list[Event]) -> list[str]:
    completed = [event_json(e) for e in events if e.event == "thread.message.completed"]
    return [message_text(m.get("content")) for m in completed if isinstance(m, dict) and m.get("role") == "assistant"]


def make_turn(owner: Owner, started_at: float, run: dict[str, Any], user: list[str], answer: list[str]) -> Turn:
    source = {"thread_id": run.get("thread_id"), "run_id": run["id"], "assistant_id": run.get("assistant_id")}
    return Turn(owner, "assistants", run["id"], user, answer, source, run.get("model"), started_at=started_at)


TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
FOLLOW_INTERVAL = 1.0
FOLLOW_SECONDS = 600.0  # runs expire after 10 minutes upstream anyway


class RunTap(TurnTap):
    """A run answer: streamed to the end it is a turn now; polled, it is parked until a GET sees it
    finish; a stream the client abandoned is followed by polling until the run ends."""

    def __init__(
        self, runtime: Runtime, request: Request, owner: Owner, started_at: float, user: list[str], stream: bool
    ) -> None:
        super().__init__(runtime, stream=stream, build=self._streamed)
        self.request, self.owner, self.started_at, self.user = request, owner, started_at, user

    def _streamed(self, data: Any) -> Turn | None:
        run = run_from(data)
        if run is None or not self.stream or run.get("status") != "completed":
            return None
        return make_turn(self.owner, self.started_at, run, self.user, streamed_answer(data))

    async def capture(self, status: int, complete: bool) -> None:
        run = run_from(self.body()) if status == 200 else None
        try:
            if run and run.get("thread_id"):
                await remember_thread(self.runtime, self.owner, run["thread_id"], [])
            if run and run.get("status") not in TERMINAL:
                await park(self.runtime, PENDING, self.owner, run["id"], self.started_at, user=self.user)
                if self.stream and not complete and run.get("thread_id"):
                    await follow(self.runtime, self.request, self.owner.tenant, run)
        finally:  # a finished run is queued (or spooled) even when the state store failed the steps above
            await super().capture(status, complete)


async def follow(runtime: Runtime, request: Request, tenant: str, run: dict[str, Any]) -> None:
    """Poll a run nobody listens to any more until it ends, and capture it like a client's poll would."""
    path = upstream_path("/threads/{t}/runs/{r}", t=run["thread_id"], r=run["id"])
    deadline = asyncio.get_running_loop().time() + FOLLOW_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(FOLLOW_INTERVAL)
        current = await runtime.forwarder.fetch_json(request, path)
        if isinstance(current, dict) and current.get("status") in TERMINAL:
            await finish_parked_run(runtime, request, tenant, current)
            return


class ThreadTap(TurnTap):
    """A created thread: its id is only known from the answer."""

    def __init__(self, runtime: Runtime, owner: Owner, texts: list[str]) -> None:
        super().__init__(runtime, stream=False, build=lambda data: None)
        self.owner, self.texts = owner, texts

    async def capture(self, status: int, complete: bool) -> None:
        thread = self.body() if status == 200 and complete else None
        if isinstance(thread, dict) and thread.get("id"):
            await remember_thread(self.runtime, self.owner, thread["id"], self.texts)


class PollTap(TurnTap):
    """GET of a run: the first time it is seen completed, its parked turn is queued."""

    def __init__(self, runtime: Runtime, request: Request, tenant: str) -> None:
        super().__init__(runtime, stream=False, build=lambda data: None)
        self.request, self.tenant = request, tenant

    async def capture(self, status: int, complete: bool) -> None:
        run = self.body() if status == 200 and complete else None
        if isinstance(run, dict):
            await finish_parked_run(self.runtime, self.request, self.tenant, run)


async def finish_parked_run(runtime: Runtime, request: Request, tenant: str, run: dict[str, Any]) -> None:
    """A parked run seen completed: the first to see it (a client's poll or a follower) queues its turn."""
    if run.get("status") != "completed":
        return
    waiting = await unpark(runtime, PENDING, tenant, run["id"])
    if waiting is None:
        return  # never parked here, or another poll took it first
    path = upstream_path("/threads/{t}/messages", t=run["thread_id"])
    listing = await runtime.forwarder.fetch_json(request, path, {"run_id": check_id(run["id"]), "order": "asc"})
    messages = listing.get("data", []) if isinstance(listing, dict) else []
    answer = [message_text(m.get("content")) for m in messages if m.get("role") == "assistant"]
    owner, record = waiting
    await queue(runtime, make_turn(owner, started_of(record), run, record.get("user") or [], answer))


# --- routes ----------------------------------------------------------------------------------------


@hooked
async def create_thread(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    memory = identify(request, runtime, subject_for(request.headers, runtime.settings, body or {}))
    if body is None or not isinstance(memory, Identified):
        return Plan(memory=memory)
    return Plan(memory=memory, tap=ThreadTap(runtime, memory.owner, user_texts(body.get("messages"))))


@hooked
async def create_message(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    if body is None or body.get("role") != "user":
        return Plan()
    thread_id = request.path_params["thread_id"]
    memory = identify(request, runtime, await thread_subject(request, runtime, {}, thread_id))
    if isinstance(memory, Identified):
        await remember_thread(runtime, memory.owner, thread_id, user_texts([body]))
    return Plan(memory=memory)


@hooked
async def create_run(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    if body is None:
        return Plan()
    thread_id = request.path_params["thread_id"]
    memory = identify(request, runtime, await thread_subject(request, runtime, body, thread_id))
    if not isinstance(memory, Identified):
        return Plan(memory=memory)
    user = user_texts(body.get("additional_messages")) or await recent_user_texts(
        request, runtime, memory.owner, thread_id
    )
    memory = await recall(runtime, memory, "\n".join(user), assistant_id=body.get("assistant_id"))
    if memory.block:
        body["additional_instructions"] = append_text(body.get("additional_instructions"), memory.block)
    tap = RunTap(runtime, request, memory.owner, memory.at, user, stream=bool(body.get("stream")))
    return Plan(encode(body) if memory.block else None, memory, tap)


async def assistant_instructions(request: Request, runtime: Runtime, tenant: str, assistant_id: str) -> str:
    mine = runtime.state.tenant(tenant)
    cached = await mine.get("assistant_instructions", assistant_id)
    if isinstance(cached, str):
        return cached
    assistant = await runtime.forwarder.fetch_json(request, upstream_path("/assistants/{a}", a=assistant_id))
    instructions = (assistant or {}).get("instructions") or ""
    if assistant is not None:
        await mine.set("assistant_instructions", assistant_id, instructions, ttl=ASSISTANT_TTL)
    return instructions


@hooked
async def create_thread_and_run(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    if body is None:
        return Plan()
    given = body.get("thread")
    thread: dict[str, Any] = given if isinstance(given, dict) else {}
    named = subject_for(request.headers, runtime.settings, body) or subject_for(
        request.headers, runtime.settings, thread
    )
    memory = identify(request, runtime, named)
    if not isinstance(memory, Identified):
        return Plan(memory=memory)
    user = user_texts(thread.get("messages"))
    memory = await recall(runtime, memory, "\n".join(user), assistant_id=body.get("assistant_id"))
    if memory.block:
        own = body.get("instructions")
        if not own and isinstance(body.get("assistant_id"), str):
            own = await assistant_instructions(request, runtime, memory.owner.tenant, body["assistant_id"])
        body["instructions"] = append_text(own, memory.block)
    tap = RunTap(runtime, request, memory.owner, memory.at, user, stream=bool(body.get("stream")))
    return Plan(encode(body) if memory.block else None, memory, tap)


@hooked
async def submit_tool_outputs(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    """The run goes on: its end is captured like a run's, from its parked record or its stream."""
    tenant = tenant_of(request, runtime)
    if body is None or tenant is None:
        return Plan()
    run_id, stream = request.path_params["run_id"], bool(body.get("stream"))
    # streamed, this response's tap captures the run (and parks it again if it stops short)
    waiting = await (unpark if stream else parked)(runtime, PENDING, tenant, run_id)
    if waiting is None:
        return Plan()
    owner, record = waiting
    tap = RunTap(runtime, request, owner, started_of(record), record.get("user") or [], stream=stream)
    return Plan(tap=tap)


@hooked
async def retrieve_run(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    tenant = tenant_of(request, runtime)
    return Plan(tap=PollTap(runtime, request, tenant)) if tenant else Plan()


@hooked
async def update_assistant(request: Request, runtime: Runtime, body: dict[str, Any] | None) -> Plan:
    """An updated assistant may have new instructions: drop the cached copy."""
    tenant = tenant_of(request, runtime)
    if tenant is not None:
        await runtime.state.tenant(tenant).delete("assistant_instructions", request.path_params["assistant_id"])
    return Plan()
