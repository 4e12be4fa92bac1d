"""``/threads/{t}/messages``: a message is an item of the thread's conversation.

Message ids are the conversation item ids, stable across calls and replicas. What items cannot
carry (creation time, metadata, the run and assistant that wrote it) is kept in the state store
under the item id.
"""

from __future__ import annotations

from typing import Any

from proxy.assistants import guards
from proxy.assistants.engine import Engine, messages_of
from proxy.assistants.objects import is_message_item, list_page, message_object, now
from proxy.assistants.upstream import ITEMS_PER_CALL, UpstreamError
from proxy.assistants.validation import check_metadata, check_object, invalid, missing, not_found, unsupported

UPSTREAM_PAGE = 100


def to_item(body: Any, param: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A ``CreateMessageRequest`` as a conversation input item, plus its validated metadata."""
    body = check_object(body, param)
    for name in ("role", "content"):
        if body.get(name) is None:
            raise missing(_join(param, name))
    role = body["role"]
    if role not in ("user", "assistant"):
        raise invalid(_join(param, "role"), f"expected one of 'user' or 'assistant', but got {role!r}.")
    if body.get("attachments"):
        raise unsupported(_join(param, "attachments"), "attaching files to messages")
    metadata = check_metadata(body.get("metadata"), _join(param, "metadata"))
    return {
        "type": "message",
        "role": role,
        "content": _parts(body["content"], role, _join(param, "content")),
    }, metadata


def _join(param: str, name: str) -> str:
    return f"{param}.{name}" if param else name


def _parts(content: Any, role: str, param: str) -> list[dict[str, Any]]:
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return [{"type": text_type, "text": content}]
    if not isinstance(content, list) or not content:
        raise invalid(param, "expected a string or a non-empty array of content parts.", "invalid_type")
    return [_part(part, text_type, role, f"{param}[{index}]") for index, part in enumerate(content)]


def _part(part: Any, text_type: str, role: str, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": text_type, "text": part["text"]}
    if kind in ("image_url", "image_file") and role == "assistant":
        raise invalid(f"{param}.type", "images are only allowed in user messages.")
    if kind == "image_url" and isinstance(part.get("image_url"), dict):
        image = part["image_url"]
        return {"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail") or "auto"}
    if kind == "image_file" and isinstance(part.get("image_file"), dict):
        image = part["image_file"]
        return {"type": "input_image", "file_id": image.get("file_id"), "detail": image.get("detail") or "auto"}
    raise invalid(param, "expected a content part of type 'text', 'image_url' or 'image_file'.")


async def add(
    engine: Engine,
    thread: dict[str, Any],
    bodies: list[Any],
    param: str,
    *,
    run_id: str | None = None,
    assistant_id: str | None = None,
) -> list[dict[str, Any]]:
    """Validate and append messages to the thread's conversation; answers them as message objects."""
    prepared = [to_item(body, f"{param}[{index}]" if param else "") for index, body in enumerate(bodies)]
    created: list[dict[str, Any]] = []
    for start in range(0, len(prepared), ITEMS_PER_CALL):
        chunk = prepared[start : start + ITEMS_PER_CALL]
        items = await engine.upstream.create_items(thread["conversation_id"], [item for item, _ in chunk])
        for item, (_, metadata) in zip(items, chunk, strict=True):
            record = {
                "id": item["id"],
                "created_at": now(),
                "metadata": metadata,
                "run_id": run_id,
                "assistant_id": assistant_id,
            }
            await engine.put(messages_of(thread["id"]), record)
            created.append(message_object(item, thread["id"], record))
    return created


async def _item(engine: Engine, thread: dict[str, Any], message_id: str) -> dict[str, Any]:
    try:
        item = await engine.upstream.retrieve_item(thread["conversation_id"], message_id)
    except UpstreamError as exc:
        if exc.status == 404:
            raise not_found("message", message_id) from None
        raise
    if not is_message_item(item):
        raise not_found("message", message_id)
    return item


async def _record(engine: Engine, thread_id: str, message_id: str) -> dict[str, Any] | None:
    return await engine.records.get_record(engine.tenant, messages_of(thread_id), message_id)


async def create(engine: Engine, thread_id: str, body: dict[str, Any]) -> dict[str, Any]:
    thread = await engine.thread(thread_id)
    await guards.ensure_idle(engine, thread_id, "add messages to")
    return (await add(engine, thread, [body], ""))[0]


async def retrieve(engine: Engine, thread_id: str, message_id: str) -> dict[str, Any]:
    thread = await engine.thread(thread_id)
    item = await _item(engine, thread, message_id)
    record = await _record(engine, thread_id, message_id) or {"created_at": thread["created_at"]}
    return message_object(item, thread_id, record)


async def update(engine: Engine, thread_id: str, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Only metadata can change; it lives in the state store (conversation items are immutable)."""
    thread = await engine.thread(thread_id)
    item = await _item(engine, thread, message_id)
    record = await _record(engine, thread_id, message_id) or {"id": message_id, "created_at": thread["created_at"]}
    if "metadata" in body:
        record["metadata"] = check_metadata(body["metadata"])
        await engine.put(messages_of(thread_id), record)
    return message_object(item, thread_id, record)


async def delete(engine: Engine, thread_id: str, message_id: str) -> dict[str, Any]:
    thread = await engine.thread(thread_id)
    await _item(engine, thread, message_id)
    await engine.upstream.delete_item(thread["conversation_id"], message_id)
    await engine.records.delete_record(engine.tenant, messages_of(thread_id), message_id)
    return {"id": message_id, "object": "thread.message.deleted", "deleted": True}


async def list_all(engine: Engine, thread_id: str, params: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Messages in ``order``, paginated with ``after``/``before``, optionally only one run's.

    Conversations list only forwards (``after``); ``before=X`` scans from X the other way and
    reverses the page, as the state store's records do.
    """
    thread = await engine.thread(thread_id)
    limit, before = params["limit"], params["before"]
    order = params["order"] if before is None else ("asc" if params["order"] == "desc" else "desc")
    found: list[dict[str, Any]] = []
    cursor, more = params["after"] or before, True
    while more and len(found) <= limit:
        page = await engine.upstream.list_items(
            thread["conversation_id"], limit=UPSTREAM_PAGE, order=order, after=cursor
        )
        for item in filter(is_message_item, page["data"]):
            record = await _record(engine, thread_id, item["id"])
            if run_id is None or (record or {}).get("run_id") == run_id:
                found.append(message_object(item, thread_id, record or {"created_at": thread["created_at"]}))
        more, cursor = bool(page.get("has_more")) and bool(page["data"]), page.get("last_id")
    data = found[:limit]
    if before is not None:
        data.reverse()
    return list_page(data, len(found) > limit)
