"""``/threads``: a thread is an upstream conversation; its metadata is the conversation's.

The state store keeps a small thread record (tenant-scoped: id -> conversation id, created_at), so
one tenant can never reach another's thread even on a shared upstream key.
"""

from __future__ import annotations

from typing import Any

from proxy.assistants import messages
from proxy.assistants.engine import THREADS, Engine, messages_of, runs_of, steps_of
from proxy.assistants.objects import deleted, new_id, now, thread_object
from proxy.assistants.upstream import UpstreamError
from proxy.assistants.validation import check_metadata, check_object, check_tool_resources, invalid

MAX_MESSAGES = 32


async def open_thread(
    engine: Engine, body: Any, param: str = ""
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Create a thread from a ``CreateThreadRequest``: (record, thread object, its messages)."""
    body = check_object(body or {}, param or "body")
    prefix = f"{param}." if param else ""
    metadata = check_metadata(body.get("metadata"), f"{prefix}metadata")
    check_tool_resources(body.get("tool_resources"), f"{prefix}tool_resources")
    initial = body.get("messages") or []
    if not isinstance(initial, list) or len(initial) > MAX_MESSAGES:
        raise invalid(f"{prefix}messages", f"expected an array of at most {MAX_MESSAGES} messages.")
    for index, message in enumerate(initial):
        messages.to_item(message, f"{prefix}messages[{index}]")  # validate all before creating anything
    conversation = await engine.upstream.create_conversation(metadata)
    record = {"id": new_id("thread_"), "created_at": now(), "conversation_id": conversation["id"]}
    await engine.put(THREADS, record)
    created = await messages.add(engine, record, initial, f"{prefix}messages")
    return record, thread_object(record, metadata), created


async def create(engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    return (await open_thread(engine, body))[1]


async def metadata_of(engine: Engine, record: dict[str, Any]) -> dict[str, str]:
    conversation = await engine.upstream.retrieve_conversation(record["conversation_id"])
    return conversation.get("metadata") or {}


async def retrieve(engine: Engine, thread_id: str) -> dict[str, Any]:
    record = await engine.thread(thread_id)
    return thread_object(record, await metadata_of(engine, record))


async def update(engine: Engine, thread_id: str, body: dict[str, Any]) -> dict[str, Any]:
    record = await engine.thread(thread_id)
    check_tool_resources(body.get("tool_resources"))
    if "metadata" not in body:
        return thread_object(record, await metadata_of(engine, record))
    metadata = check_metadata(body["metadata"])
    conversation = await engine.upstream.update_conversation(record["conversation_id"], metadata)
    return thread_object(record, conversation.get("metadata") or {})


async def delete(engine: Engine, thread_id: str) -> dict[str, Any]:
    """Delete the conversation and every record of the thread (runs, their steps, message extras)."""
    record = await engine.thread(thread_id)
    try:
        await engine.upstream.delete_conversation(record["conversation_id"])
    except UpstreamError as exc:
        if exc.status != 404:
            raise
    await engine.records.delete_record(engine.tenant, THREADS, thread_id)
    while True:
        page = await engine.records.list_records(engine.tenant, runs_of(thread_id), limit=100, order="asc")
        for run in page.items:
            await engine.delete_all(steps_of(run["id"]))
            await engine.records.delete_record(engine.tenant, runs_of(thread_id), run["id"])
        if not page.has_more:
            break
    await engine.delete_all(messages_of(thread_id))
    return deleted(thread_id, "thread")
