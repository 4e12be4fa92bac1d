"""Builders of spec-shaped Assistants objects (OpenAPI ``AssistantObject``, ``MessageObject``, ...).

Every object the engine answers is built here, so the shapes that tests check against the spec
live in one place (the run object itself is built by ``runs.build`` into a
:class:`~proxy.assistants.run_record.RunRecord`, next to the fields only the engine reads).
"""

from __future__ import annotations

import hashlib
import secrets
import string
import time
from collections.abc import Sequence
from typing import Any

_ALPHABET = string.ascii_letters + string.digits
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
ACTIVE = ("queued", "in_progress", "requires_action", "cancelling")


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    """``asst_``/``thread_``/``run_`` + 24 random letters and digits, as OpenAI's ids look."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def derived_id(prefix: str, *parts: str) -> str:
    """An id computed from others: two replicas reconciling the same run create the same step."""
    return prefix + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def list_page(data: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def deleted(object_id: str, kind: str) -> dict[str, Any]:
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}


def thread_object(record: dict[str, Any], metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "object": "thread",
        "created_at": record["created_at"],
        "tool_resources": {},
        "metadata": metadata,
    }


# --- messages ------------------------------------------------------------------------------------


def text_content(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"value": text, "annotations": []}}


def _content(part: Any) -> dict[str, Any] | None:
    """One Responses content part as an Assistants message content block (None: not representable)."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return text_content(part.get("text", ""))
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "input_image" and part.get("file_id"):
        return {
            "type": "image_file",
            "image_file": {"file_id": part["file_id"], "detail": part.get("detail") or "auto"},
        }
    if kind == "input_image" and part.get("image_url"):
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}}
    return None


def is_message_item(item: dict[str, Any]) -> bool:
    """Conversation items that are thread messages: user and assistant messages only."""
    return item.get("type") == "message" and item.get("role") in ("user", "assistant")


def message_object(item: dict[str, Any], thread_id: str, record: dict[str, Any] | None) -> dict[str, Any]:
    """A conversation message item as a ``thread.message``; ``record`` holds what items lack."""
    record = record or {}
    content = item.get("content")
    blocks = [text_content(content)] if isinstance(content, str) else [_content(part) for part in content or []]
    status = item.get("status") or "completed"
    created_at = record.get("created_at") or 0
    done = status == "completed" and item.get("role") == "assistant"
    return {
        "id": item["id"],
        "object": "thread.message",
        "created_at": created_at,
        "thread_id": thread_id,
        "status": status,
        "incomplete_details": {"reason": record.get("incomplete_reason", "max_tokens")}
        if status == "incomplete"
        else None,
        "completed_at": record.get("completed_at", created_at) if done else None,
        "incomplete_at": created_at if status == "incomplete" else None,
        "role": item["role"],
        "content": [block for block in blocks if block is not None],
        "assistant_id": record.get("assistant_id"),
        "run_id": record.get("run_id"),
        "attachments": [],
        "metadata": record.get("metadata") or {},
    }


# --- runs and steps ------------------------------------------------------------------------------


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A ``RunToolCallObject`` (what ``required_action`` lists)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def step_object(
    run: dict[str, Any],
    step_id: str,
    details: dict[str, Any],
    *,
    status: str = "in_progress",
    created_at: int | None = None,
) -> dict[str, Any]:
    stamp = created_at or now()
    return {
        "id": step_id,
        "object": "thread.run.step",
        "created_at": stamp,
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "run_id": run["id"],
        "type": details["type"],
        "status": status,
        "step_details": details,
        "last_error": None,
        "expired_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "metadata": {},
        "usage": None,
    }


def message_step_details(message_id: str) -> dict[str, Any]:
    return {"type": "message_creation", "message_creation": {"message_id": message_id}}


def usage(tokens: dict[str, int] | None) -> dict[str, int] | None:
    """Responses usage (input/output tokens) as Assistants usage (prompt/completion tokens)."""
    if tokens is None:
        return None
    prompt, completion = tokens.get("input_tokens", 0), tokens.get("output_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def add_usage(total: dict[str, int] | None, more: dict[str, int] | None) -> dict[str, int] | None:
    if more is None:
        return total
    if total is None:
        return dict(more)
    return {key: total.get(key, 0) + more.get(key, 0) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
