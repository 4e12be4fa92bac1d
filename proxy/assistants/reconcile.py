"""Reconciling a run record with its upstream response: the one path polling and streaming share.

Idempotent by construction: steps and messages get ids derived from the response's items, times of
earlier versions are kept, and the after-run hook is claimed once through the state store, so two
replicas (or a poll racing a stream) that reconcile the same run end with the same records.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.assistants.engine import AFTER_RUN_NS, Engine, messages_of, runs_of, steps_of
from proxy.assistants.hooks import RunContext, RunHooks
from proxy.assistants.objects import (
    TERMINAL,
    add_usage,
    derived_id,
    message_object,
    message_step_details,
    now,
    step_object,
    tool_call,
    usage,
)
from proxy.assistants.run_record import RunRecord
from proxy.assistants.upstream import UpstreamError

log = logging.getLogger("memproxy.assistants")

ERROR_CODES = {"rate_limit_exceeded": "rate_limit_exceeded", "invalid_prompt": "invalid_prompt"}


async def save(engine: Engine, run: RunRecord) -> None:
    await engine.put(runs_of(run.thread_id), run.to_stored())


async def apply_response(engine: Engine, run: RunRecord, response: dict[str, Any]) -> list[dict[str, Any]]:
    """Move ``run`` to where ``response`` is; saves it. Answers the messages a finished response wrote."""
    status = response["status"]
    run.response_id = response["id"]
    written: list[dict[str, Any]] = []
    if status in ("queued", "in_progress"):
        if run.status != "cancelling":
            run.public["status"] = status
        if status == "in_progress":
            run.public["started_at"] = run.public["started_at"] or now()
    else:
        run.public["started_at"] = run.public["started_at"] or now()
        run.usage = add_usage(run.usage, usage(response.get("usage")))
        output = response.get("output") or []
        written = await _record_messages(engine, run, output, status)
        calls = [item for item in output if item.get("type") == "function_call"]
        if status == "completed" and calls:
            await _require_action(engine, run, response["id"], calls)
        else:
            finish(run, status, response)
    await save(engine, run)
    if run.status in TERMINAL:
        await after_run(engine, run, written)
    return written


async def _record_messages(
    engine: Engine, run: RunRecord, output: list[dict[str, Any]], status: str
) -> list[dict[str, Any]]:
    """Message records and message_creation steps for the response's assistant messages."""
    written = []
    collection = messages_of(run.thread_id)
    for item in output:
        if item.get("type") != "message":
            continue
        record = await engine.records.get_record(engine.tenant, collection, item["id"])
        record = record or {"id": item["id"], "created_at": now(), "metadata": {}}
        record.update(run_id=run.id, assistant_id=run.public["assistant_id"], completed_at=now())
        await engine.put(collection, record)
        if status == "incomplete" and item.get("status") != "completed":
            item = {**item, "status": "incomplete"}
        written.append(message_object(item, run.thread_id, record))
        await save_step(engine, run, message_step(run, item["id"]), "completed")
    return written


def message_step(run: RunRecord, message_id: str) -> dict[str, Any]:
    return step_object(run.public, derived_id("step_", run.id, message_id), message_step_details(message_id))


def tool_step(run: RunRecord, response_id: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    details = {
        "type": "tool_calls",
        "tool_calls": [
            {
                "id": c["call_id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"], "output": None},
            }
            for c in calls
        ],
    }
    return step_object(run.public, derived_id("step_", run.id, response_id), details)


async def save_step(engine: Engine, run: RunRecord, step: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """Store a step, keeping the creation time of an earlier version; ``status`` stamps its time field."""
    old = await engine.records.get_record(engine.tenant, steps_of(run.id), step["id"])
    if old is not None:
        step["created_at"] = old["created_at"]
    if status is not None:
        step["status"] = status
        stamp = {
            "completed": "completed_at",
            "cancelled": "cancelled_at",
            "expired": "expired_at",
            "failed": "failed_at",
        }.get(status)
        if stamp:
            step[stamp] = step[stamp] or now()
    await engine.put(steps_of(run.id), step)
    return step


async def _require_action(engine: Engine, run: RunRecord, response_id: str, calls: list[dict[str, Any]]) -> None:
    step = await save_step(engine, run, tool_step(run, response_id, calls))
    run.tool_step = step["id"]
    run.public["status"] = "requires_action"
    run.public["required_action"] = {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {"tool_calls": [tool_call(c["call_id"], c["name"], c["arguments"]) for c in calls]},
    }


def finish(run: RunRecord, status: str, response: dict[str, Any]) -> None:
    """A terminal response status onto the run: timestamps, error, usage."""
    public = run.public
    public["status"] = status if status in TERMINAL else "failed"
    public["required_action"], public["expires_at"] = None, None
    public["usage"] = run.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "failed": "failed_at"}.get(public["status"])
    if stamp:
        public[stamp] = public[stamp] or now()
    if public["status"] == "failed":
        error = response.get("error") or {}
        public["last_error"] = {
            "code": ERROR_CODES.get(error.get("code") or "", "server_error"),
            "message": error.get("message") or "The run failed.",
        }
    if public["status"] == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        public["incomplete_details"] = {
            "reason": "max_completion_tokens" if reason == "max_output_tokens" else "max_prompt_tokens"
        }


async def after_run(engine: Engine, run: RunRecord, written: list[dict[str, Any]]) -> None:
    """The after-run hook, once per run across replicas; its failures never fail the request."""
    if type(engine.hooks).after_run is RunHooks.after_run:
        return
    if not await engine.records.set_add(AFTER_RUN_NS, engine.tenant, run.id):
        return
    ctx = RunContext(
        engine.tenant,
        run.thread_id,
        run.thread_metadata,
        run.public["assistant_id"],
        run.public["metadata"],
        kept=run.kept,
    )
    try:
        await engine.hooks.after_run(ctx, run.answer(), written)
    except Exception:
        log.exception("after_run hook failed for a run")


async def refresh(engine: Engine, run: RunRecord) -> RunRecord:
    """Bring a stored run up to date with its upstream response (no call when nothing can change)."""
    expires_at = run.public["expires_at"]
    if run.status == "requires_action" and expires_at and now() > expires_at:
        await expire(engine, run)
    if run.status in TERMINAL or run.status == "requires_action" or not run.response_id:
        return run
    try:
        response = await engine.upstream.retrieve_response(run.response_id)
    except UpstreamError as exc:
        if exc.status != 404:
            raise
        response = {
            "id": run.response_id,
            "status": "failed",
            "error": {"message": "The run's upstream response no longer exists."},
        }
    await apply_response(engine, run, response)
    return run


async def expire(engine: Engine, run: RunRecord) -> None:
    await close_tool_step(engine, run, "expired")
    finish(run, "expired", {})
    await save(engine, run)
    await after_run(engine, run, [])


async def close_tool_step(engine: Engine, run: RunRecord, status: str, outputs: dict[str, str] | None = None) -> None:
    step = await engine.records.get_record(engine.tenant, steps_of(run.id), run.tool_step or "")
    if step is None:
        return
    for call in step["step_details"]["tool_calls"]:
        call["function"]["output"] = (outputs or {}).get(call["id"])
    await save_step(engine, run, step, status)
