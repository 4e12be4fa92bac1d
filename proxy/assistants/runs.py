"""Runs: a run is one or more upstream responses on the thread's conversation.

The run record (state store, not process memory) carries the current response id, so any replica,
or the same one after a restart, can answer for the run: :func:`reconcile.refresh` reconciles a record with
its upstream response. Reconciling is idempotent (steps and messages have ids derived from the
response's items), so two replicas polling the same run agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from proxy.assistants import assistants, guards, messages, reconcile, threads
from proxy.assistants.engine import Engine, runs_of, steps_of
from proxy.assistants.hooks import RunContext
from proxy.assistants.mapping import join_instructions, response_body
from proxy.assistants.objects import TERMINAL, list_page, new_id, now
from proxy.assistants.run_record import RunRecord
from proxy.assistants.validation import (
    check_int,
    check_metadata,
    check_number,
    check_response_format,
    check_tool_choice,
    check_tool_resources,
    check_tools,
    invalid,
    require,
    unsupported,
)
from proxy.errors import OpenAIError

EXPIRES_AFTER = 600
"""Seconds a run may wait in ``requires_action`` before it expires, as on OpenAI."""


@dataclass
class RunRequest:
    """A validated run request (``POST /runs`` or ``/threads/runs``), before anything was created."""

    assistant: dict[str, Any]
    body: dict[str, Any]
    tools: list[dict[str, Any]]
    metadata: dict[str, str]


async def validate(engine: Engine, body: dict[str, Any]) -> RunRequest:
    """Check a run request completely, so a refusal never leaves half-created objects behind."""
    require(body, "assistant_id")
    if body.get("max_prompt_tokens") is not None:
        raise unsupported("max_prompt_tokens", "a prompt token budget")
    truncation = body.get("truncation_strategy")
    if isinstance(truncation, dict) and truncation.get("type") not in (None, "auto"):
        raise unsupported("truncation_strategy.type", f"truncation '{truncation.get('type')}'")
    if body.get("include"):
        raise unsupported("include", "including file_search results")
    tools = check_tools(body["tools"]) if body.get("tools") is not None else None
    for name in ("instructions", "additional_instructions", "model"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid(name, "expected a string.", "invalid_type")
    check_number(body, "temperature", 0, 2)
    check_number(body, "top_p", 0, 1)
    check_int(body, "max_completion_tokens", 16)
    check_response_format(body.get("response_format"))
    check_tool_choice(body.get("tool_choice"))
    assistants.reasoning_effort(body.get("reasoning_effort"))
    metadata = check_metadata(body.get("metadata"))
    extra = body.get("additional_messages") or []
    if not isinstance(extra, list):
        raise invalid("additional_messages", "expected an array.", "invalid_type")
    for index, message in enumerate(extra):
        messages.to_item(message, f"additional_messages[{index}]")
    assistant = await assistants.retrieve(engine, body["assistant_id"])
    return RunRequest(assistant, body, tools if tools is not None else assistant["tools"], metadata)


def _pick(body: dict[str, Any], assistant: dict[str, Any], name: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        value = assistant.get(name)
    return default if value is None else value


async def build(
    engine: Engine,
    request: RunRequest,
    thread: dict[str, Any],
    thread_metadata: dict[str, str],
    new_messages: list[dict[str, Any]],
) -> RunRecord:
    """The run record (status ``queued``), with the memory hook's instructions appended."""
    body, assistant = request.body, request.assistant
    instructions = join_instructions(_pick(body, assistant, "instructions"), body.get("additional_instructions"))
    ctx = RunContext(
        engine.tenant,
        thread["id"],
        thread_metadata,
        assistant["id"],
        request.metadata,
        [m for m in new_messages if m["role"] == "user"],
    )
    instructions = join_instructions(instructions, await engine.hooks.before_run(ctx))
    created = now()
    run = {
        "id": new_id("run_"),
        "object": "thread.run",
        "created_at": created,
        "thread_id": thread["id"],
        "assistant_id": assistant["id"],
        "status": "queued",
        "required_action": None,
        "last_error": None,
        "expires_at": created + EXPIRES_AFTER,
        "started_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "incomplete_details": None,
        "model": _pick(body, assistant, "model"),
        "instructions": instructions or "",
        "tools": request.tools,
        "metadata": request.metadata,
        "usage": None,
        "temperature": _pick(body, assistant, "temperature", 1.0),
        "top_p": _pick(body, assistant, "top_p", 1.0),
        "max_prompt_tokens": None,
        "max_completion_tokens": body.get("max_completion_tokens"),
        "truncation_strategy": {"type": "auto", "last_messages": None},
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "response_format": _pick(body, assistant, "response_format", "auto"),
        "reasoning_effort": _pick(body, assistant, "reasoning_effort"),
    }
    body = response_body(run, thread["conversation_id"])
    return RunRecord(run, body, thread_metadata=thread_metadata, kept=ctx.kept)


async def get(engine: Engine, thread_id: str, run_id: str) -> RunRecord:
    await engine.thread(thread_id)
    return RunRecord.from_stored(await engine.get(runs_of(thread_id), run_id, "run"))


# --- the endpoints ----------------------------------------------------------------------------------


async def start(engine: Engine, run: RunRecord, input_items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Start the run's next response in the background (polled runs)."""
    body = {**run.body, "background": True, **({"input": input_items} if input_items else {})}
    response = await engine.upstream.create_response(body)
    await reconcile.apply_response(engine, run, response)
    return run.answer()


async def create(engine: Engine, thread_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /threads/{t}/runs`` (polled): the run record; see :func:`prepare_create` for streams."""
    run = await prepare_create(engine, thread_id, body)
    return await start(engine, run)


async def prepare_create(engine: Engine, thread_id: str, body: dict[str, Any]) -> RunRecord:
    """Validate, add ``additional_messages``, build the run record (not yet saved or started)."""
    thread = await engine.thread(thread_id)
    request = await validate(engine, body)
    await guards.ensure_idle(engine, thread_id, "create a run on")
    metadata = await threads.metadata_of(engine, thread)
    added = await messages.add(engine, thread, body.get("additional_messages") or [], "additional_messages")
    return await build(engine, request, thread, metadata, added)


async def prepare_create_and_run(engine: Engine, body: dict[str, Any]) -> tuple[dict[str, Any], RunRecord]:
    """``POST /threads/runs``: (thread object, run record); validated in full before creating either."""
    request = await validate(engine, {k: v for k, v in body.items() if k != "thread"})
    check_tool_resources(body.get("tool_resources"))
    record, thread, added = await threads.open_thread(engine, body.get("thread"), "thread")
    return thread, await build(engine, request, record, thread["metadata"], added)


async def retrieve(engine: Engine, thread_id: str, run_id: str) -> dict[str, Any]:
    return (await reconcile.refresh(engine, await get(engine, thread_id, run_id))).answer()


async def update(engine: Engine, thread_id: str, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    run = await reconcile.refresh(engine, await get(engine, thread_id, run_id))
    if "metadata" in body:
        run.public["metadata"] = check_metadata(body["metadata"])
        await reconcile.save(engine, run)
    return run.answer()


async def list_all(engine: Engine, thread_id: str, params: dict[str, Any]) -> dict[str, Any]:
    await engine.thread(thread_id)
    page = await engine.page(runs_of(thread_id), params)
    runs = [await reconcile.refresh(engine, RunRecord.from_stored(stored)) for stored in page.items]
    return list_page([run.answer() for run in runs], page.has_more)


async def cancel(engine: Engine, thread_id: str, run_id: str) -> dict[str, Any]:
    run = await reconcile.refresh(engine, await get(engine, thread_id, run_id))
    if run.status in (*TERMINAL, "cancelling"):
        raise OpenAIError(400, f"Cannot cancel run with status '{run.status}'.", param="run_id")
    if run.status == "requires_action":
        await reconcile.close_tool_step(engine, run, "cancelled")
        reconcile.finish(run, "cancelled", {})
        await reconcile.save(engine, run)
        await reconcile.after_run(engine, run, [])
        return run.answer()
    response = await engine.upstream.cancel_response(run.response_id or "")
    run.public["status"] = "cancelling"
    await reconcile.apply_response(engine, run, response)
    return run.answer()


def tool_outputs(run: RunRecord, body: dict[str, Any]) -> dict[str, str]:
    """``tool_call_id -> output``, checked against the calls the run is waiting for."""
    if run.status != "requires_action":
        raise OpenAIError(400, f'Runs in status "{run.status}" do not accept tool outputs.', param="run_id")
    require(body, "tool_outputs")
    given = body["tool_outputs"]
    if not isinstance(given, list) or not all(isinstance(o, dict) and o.get("tool_call_id") for o in given):
        raise invalid("tool_outputs", "expected an array of objects with a 'tool_call_id'.")
    expected = [call["id"] for call in run.public["required_action"]["submit_tool_outputs"]["tool_calls"]]
    outputs = {o["tool_call_id"]: o.get("output") or "" for o in given}
    if sorted(outputs) != sorted(expected):
        raise invalid("tool_outputs", f"expected tool outputs for call_ids {expected}, got {list(outputs)}.")
    return outputs


@dataclass
class Submission:
    """Tool outputs accepted for a run, not yet sent: the run, its tool step and the output items."""

    run: RunRecord
    step_id: str
    outputs: dict[str, str]

    @property
    def items(self) -> list[dict[str, Any]]:
        return [
            {"type": "function_call_output", "call_id": call_id, "output": output}
            for call_id, output in self.outputs.items()
        ]

    async def close_step(self, engine: Engine) -> dict[str, Any] | None:
        """Mark the tool step completed with its outputs, once the upstream took them."""
        await reconcile.close_tool_step(engine, replace(self.run, tool_step=self.step_id), "completed", self.outputs)
        return await engine.records.get_record(engine.tenant, steps_of(self.run.id), self.step_id)


async def prepare_submit(engine: Engine, thread_id: str, run_id: str, body: dict[str, Any]) -> Submission:
    run = await reconcile.refresh(engine, await get(engine, thread_id, run_id))
    submission = Submission(run, run.tool_step or "", tool_outputs(run, body))
    run.public.update(status="queued", required_action=None)
    run.tool_step = None
    return submission


async def submit_tool_outputs(engine: Engine, thread_id: str, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    submission = await prepare_submit(engine, thread_id, run_id, body)
    run = await start(engine, submission.run, submission.items)
    await submission.close_step(engine)
    return run


async def list_steps(engine: Engine, thread_id: str, run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    await reconcile.refresh(engine, await get(engine, thread_id, run_id))
    page = await engine.page(steps_of(run_id), params)
    return list_page(page.items, page.has_more)


async def retrieve_step(engine: Engine, thread_id: str, run_id: str, step_id: str) -> dict[str, Any]:
    await reconcile.refresh(engine, await get(engine, thread_id, run_id))
    return await engine.get(steps_of(run_id), step_id, "run step")
