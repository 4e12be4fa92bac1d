"""The engine on upstream behaviour the emulator never shows: incomplete and failed responses,
parallel calls, expiry, the after-run hook's once-only call. Upstream answers are scripted.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import validate_assistants_exchange

from proxy.assistants import assistants, reconcile, runs, threads
from proxy.assistants.engine import Engine
from proxy.assistants.hooks import RunHooks
from proxy.assistants.run_record import RunRecord
from proxy.assistants.translate import RunStream
from proxy.emulator.assistants import InProcessUpstream
from proxy.emulator.state import EmulatorState


class Scripted(InProcessUpstream):
    """The emulator's conversations, with responses answered from a script."""

    def __init__(self) -> None:
        super().__init__(EmulatorState())
        self.final: dict[str, Any] = {}
        self.output: list[dict[str, Any]] = []

    def response(self, status: str, **extra: Any) -> dict[str, Any]:
        usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
        return {"id": "resp_1", "object": "response", "status": status, "output": self.output, "usage": usage, **extra}

    async def create_response(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.response("queued")

    async def retrieve_response(self, response_id: str) -> dict[str, Any]:
        return self.final

    async def stream_response(self, body: dict[str, Any]):
        async def events():
            yield {"type": "response.created", "response": self.response("queued")}
            yield {"type": "response.in_progress", "response": self.response("in_progress")}
            for index, item in enumerate(self.output):
                yield {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress"},
                }
                if item["type"] == "message":
                    yield {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": "partial",
                    }
                else:
                    yield {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "delta": item["arguments"],
                    }
                    yield {"type": "response.output_item.done", "output_index": index, "item": item}
            yield {"type": f"response.{self.final['status']}", "response": self.final}

        return events()


class Once(RunHooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def after_run(self, ctx, run, messages) -> None:
        self.calls.append(run["status"])


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "status": "incomplete",
    "content": [{"type": "output_text", "text": "partial", "annotations": []}],
}


def call(n: int) -> dict[str, Any]:
    return {"id": f"fc_{n}", "type": "function_call", "call_id": f"call_{n}", "name": "f", "arguments": f'{{"n":{n}}}'}


@pytest.fixture
async def setup():
    from proxy.assistants.records import MemoryRecords

    upstream = Scripted()
    engine = Engine(MemoryRecords(), upstream, "t", Once())
    assistant = await assistants.create(
        engine, {"model": "m", "tools": [{"type": "function", "function": {"name": "f"}}]}
    )
    thread = await threads.create(engine, {"messages": [{"role": "user", "content": "hi"}]})
    return engine, upstream, assistant["id"], thread["id"]


async def stream(engine: Engine, thread_id: str, assistant_id: str) -> list[tuple[str, Any]]:
    """Stream a run; every event is checked against the spec; answers (event, data) pairs."""
    run = await runs.prepare_create(engine, thread_id, {"assistant_id": assistant_id})
    body = b"".join(
        [chunk async for chunk in RunStream(engine, run, await engine.upstream.stream_response({}), []).body()]
    )
    validate_assistants_exchange("POST", f"/threads/{thread_id}/runs", 200, "text/event-stream", body)
    from conftest import sse_events

    return [(name, data if data == "[DONE]" else json.loads(data)) for name, data in sse_events(body)]


async def test_an_incomplete_response_ends_message_and_run_incomplete(setup) -> None:
    engine, upstream, assistant_id, thread_id = setup
    upstream.output = [MESSAGE]
    upstream.final = upstream.response("incomplete", incomplete_details={"reason": "max_output_tokens"})
    events = await stream(engine, thread_id, assistant_id)
    names = [name for name, _ in events]
    assert names[-3:] == ["thread.message.incomplete", "thread.run.incomplete", "done"]
    run = events[-2][1]
    assert run["incomplete_details"] == {"reason": "max_completion_tokens"} and run["usage"]["total_tokens"] == 5
    assert events[-3][1]["status"] == "incomplete" and events[-3][1]["content"][0]["text"]["value"] == "partial"
    assert engine.hooks.calls == ["incomplete"]


async def test_parallel_calls_stream_as_indexed_tool_call_deltas(setup) -> None:
    engine, upstream, assistant_id, thread_id = setup
    upstream.output = [call(0), call(1)]
    upstream.final = upstream.response("completed")
    events = await stream(engine, thread_id, assistant_id)
    deltas = [
        data["delta"]["step_details"]["tool_calls"][0] for name, data in events if name == "thread.run.step.delta"
    ]
    assert [(d["index"], d.get("id")) for d in deltas] == [(0, "call_0"), (0, None), (1, "call_1"), (1, None)]
    run = events[-2][1]
    assert events[-2][0] == "thread.run.requires_action"
    assert [c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]] == ["call_0", "call_1"]
    assert engine.hooks.calls == []


async def test_a_failed_response_fails_the_polled_run_once(setup) -> None:
    engine, upstream, assistant_id, thread_id = setup
    run = await runs.create(engine, thread_id, {"assistant_id": assistant_id})
    upstream.final = upstream.response("failed", error={"code": "rate_limit_exceeded", "message": "Too many."})
    for _ in range(2):
        failed = await runs.retrieve(engine, thread_id, run["id"])
    assert failed["status"] == "failed" and failed["failed_at"] and failed["expires_at"] is None
    assert failed["last_error"] == {"code": "rate_limit_exceeded", "message": "Too many."}
    assert engine.hooks.calls == ["failed"]


async def test_a_run_waiting_too_long_for_tool_outputs_expires(setup) -> None:
    engine, upstream, assistant_id, thread_id = setup
    upstream.output = [call(0)]
    upstream.final = upstream.response("completed")
    run = await runs.create(engine, thread_id, {"assistant_id": assistant_id})
    waiting = await runs.retrieve(engine, thread_id, run["id"])
    assert waiting["status"] == "requires_action"
    record = await runs.get(engine, thread_id, run["id"])
    record.public["expires_at"] = record.public["created_at"] - 1
    await reconcile.save(engine, record)
    expired = await runs.retrieve(engine, thread_id, run["id"])
    assert expired["status"] == "expired" and expired["required_action"] is None
    [step] = (
        await runs.list_steps(
            engine, thread_id, run["id"], {"limit": 20, "order": "asc", "after": None, "before": None}
        )
    )["data"]
    assert (step["status"], step["expired_at"] is not None) == ("expired", True)
    assert engine.hooks.calls == ["expired"]


async def test_a_run_whose_upstream_response_vanished_fails(setup) -> None:
    engine, upstream, assistant_id, thread_id = setup
    run = await runs.create(engine, thread_id, {"assistant_id": assistant_id})

    async def gone(response_id: str) -> dict[str, Any]:
        from proxy.assistants.upstream import UpstreamError

        raise UpstreamError(
            404,
            {"error": {"message": "No response found.", "type": "invalid_request_error", "param": None, "code": None}},
        )

    upstream.retrieve_response = gone
    failed = await runs.retrieve(engine, thread_id, run["id"])
    assert failed["status"] == "failed" and "no longer exists" in failed["last_error"]["message"]


def _as_stored_before_run_record(run: RunRecord) -> dict[str, Any]:
    """A run record as the engine stored it before :class:`RunRecord`: private fields under ``_`` keys."""
    return {
        **run.public,
        "_response_id": run.response_id,
        "_usage": run.usage,
        "_tool_step": run.tool_step,
        "_thread_metadata": run.thread_metadata,
        "_body": run.body,
    }


async def test_a_run_stored_before_run_record_carries_on(setup) -> None:
    """Runs left in the state store in the previous layout load, finish, and are saved in the new one."""
    engine, upstream, assistant_id, thread_id = setup
    upstream.output = [call(0)]
    upstream.final = upstream.response("completed")
    run = await runs.create(engine, thread_id, {"assistant_id": assistant_id, "metadata": {"k": "v"}})
    await engine.put(f"runs:{thread_id}", _as_stored_before_run_record(await runs.get(engine, thread_id, run["id"])))

    waiting = await runs.retrieve(engine, thread_id, run["id"])
    assert waiting["status"] == "requires_action" and waiting["metadata"] == {"k": "v"}
    assert not any(key.startswith("_") for key in waiting)
    stored = await engine.records.get_record(engine.tenant, f"runs:{thread_id}", run["id"])
    assert set(stored) == {"id", "public", "body", "response_id", "usage", "tool_step", "thread_metadata", "kept"}

    # old layout again while waiting for tool outputs: the open tool step, usage and body carry over
    await engine.put(f"runs:{thread_id}", _as_stored_before_run_record(RunRecord.from_stored(stored)))
    upstream.output = [{**MESSAGE, "status": "completed"}]
    upstream.final = upstream.response("completed")
    body = {"tool_outputs": [{"tool_call_id": "call_0", "output": "4"}]}
    assert (await runs.submit_tool_outputs(engine, thread_id, run["id"], body))["status"] == "queued"
    done = await runs.retrieve(engine, thread_id, run["id"])
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 10
    params = {"limit": 20, "order": "asc", "after": None, "before": None}
    steps = (await runs.list_steps(engine, thread_id, run["id"], params))["data"]
    [tools] = [step for step in steps if step["type"] == "tool_calls"]
    assert tools["status"] == "completed" and tools["step_details"]["tool_calls"][0]["function"]["output"] == "4"
    assert engine.hooks.calls == ["completed"]


def test_a_stored_record_of_either_layout_loads_to_the_same_run() -> None:
    public = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "in_progress"}
    old = {**public, "_body": {"model": "m"}, "_response_id": "resp_1", "_usage": None, "_tool_step": None}
    loaded = RunRecord.from_stored(old)
    assert loaded == RunRecord(public, {"model": "m"}, "resp_1", None, None, {})
    assert RunRecord.from_stored(loaded.to_stored()) == loaded
    assert loaded.to_stored()["id"] == "run_1" and loaded.answer() == public
