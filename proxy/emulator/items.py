"""Responses/Conversations items: normalise what clients send, and read them as model turns.

Clients send items in short forms (``{"role": "user", "content": "hi"}``, a bare string); stored
items are full resources with ids and statuses, as ``GET /conversations/{id}/items`` and
``GET /responses/{id}/input_items`` return them. Both the Responses engine and the Conversations
endpoints store items, so the conversion lives here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.assistants.validation import invalid, missing
from proxy.emulator.ids import new_id
from proxy.emulator.model import Turn
from proxy.errors import OpenAIError

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def output_text_part(text: str) -> dict[str, Any]:
    """An ``output_text`` content part as the API returns it."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(role: str, text: str, item_id: str | None = None) -> dict[str, Any]:
    """A completed message item with one text part (``output_text`` for the assistant)."""
    part = output_text_part(text) if role == "assistant" else {"type": "input_text", "text": text}
    return {
        "id": item_id or new_id("message"),
        "type": "message",
        "status": "completed",
        "role": role,
        "content": [part],
    }


def normalize_input(value: Any, param: str = "input") -> list[dict[str, Any]]:
    """``input`` (a string or a list of items) as item resources with ids."""
    if isinstance(value, str):
        return [message_item("user", value)]
    if not isinstance(value, list):
        raise invalid(param, "expected a string or an array of input items.", "invalid_type")
    return [normalize_item(item, f"{param}[{index}]") for index, item in enumerate(value)]


def normalize_item(item: Any, param: str) -> dict[str, Any]:
    """One input item as a stored item resource (id and status filled in)."""
    if not isinstance(item, dict):
        raise invalid(param, "expected an object.", "invalid_type")
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        return _message(item, param)
    if kind == "function_call":
        _require(item, param, "call_id", "name", "arguments")
        return {
            "id": item.get("id") or new_id("function_call"),
            "type": "function_call",
            "status": "completed",
            "call_id": item["call_id"],
            "name": item["name"],
            "arguments": item["arguments"],
        }
    if kind == "function_call_output":
        _require(item, param, "call_id", "output")
        return {
            "id": item.get("id") or new_id("function_call_output"),
            "type": "function_call_output",
            "status": "completed",
            "call_id": item["call_id"],
            "output": item["output"],
        }
    if kind == "item_reference":
        raise OpenAIError(400, f"Item references are not supported by the emulator ('{param}').", param=param)
    if not isinstance(kind, str):
        raise missing(f"{param}.type")
    return {**item, "id": item.get("id") or new_id("message"), "status": item.get("status") or "completed"}


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise invalid(f"{param}.role", f"expected one of {', '.join(map(repr, MESSAGE_ROLES))}, but got {role!r}.")
    content = item.get("content")
    if isinstance(content, str):
        return message_item(role, content, item.get("id"))
    if not isinstance(content, list):
        raise missing(f"{param}.content")
    parts = [_part(part, role) for part in content]
    return {
        "id": item.get("id") or new_id("message"),
        "type": "message",
        "status": "completed",
        "role": role,
        "content": parts,
    }


def _part(part: Any, role: str) -> Any:
    if isinstance(part, dict) and part.get("type") == "output_text":
        return {**output_text_part(part.get("text", "")), **{k: v for k, v in part.items() if k != "type"}}
    if isinstance(part, dict) and part.get("type") == "text":
        text = part.get("text", "")
        return output_text_part(text) if role == "assistant" else {"type": "input_text", "text": text}
    return part


def _require(item: dict[str, Any], param: str, *fields: str) -> None:
    for name in fields:
        if item.get(name) is None:
            raise missing(f"{param}.{name}")


def text_of(content: Any) -> str:
    """Text of message content: the string itself, or its text parts joined (images, files skipped)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in _TEXT_PARTS)


def item_text(item: dict[str, Any]) -> str:
    """The text of a message item, or of a function call's output."""
    return text_of(item.get("content", item.get("output", "")))


def items_to_turns(items: Iterable[dict[str, Any]]) -> list[Turn]:
    """Items as model turns: messages, function calls and their outputs; other items are skipped."""
    turns: list[Turn] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            turns.append(Turn(item["role"], item_text(item)))
        elif kind == "function_call":
            turns.append(Turn("tool_call", item.get("arguments", ""), item.get("name"), item.get("call_id")))
        elif kind == "function_call_output":
            turns.append(Turn("tool", item_text(item), call_id=item.get("call_id")))
    return turns
