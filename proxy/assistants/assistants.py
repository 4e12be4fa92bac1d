"""``/assistants``: definitions stored per tenant by the engine (Responses has no such object)."""

from __future__ import annotations

from typing import Any

from proxy.assistants.engine import ASSISTANTS, Engine
from proxy.assistants.objects import deleted, list_page, new_id, now
from proxy.assistants.validation import (
    check_metadata,
    check_number,
    check_response_format,
    check_string,
    check_tool_resources,
    check_tools,
    invalid,
    require,
)

REASONING_EFFORTS = ("minimal", "low", "medium", "high", None)


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    """The validated fields of a create/modify request that are present in ``body``."""
    checks = {
        "model": lambda: check_string(body, "model"),
        "name": lambda: check_string(body, "name", 256),
        "description": lambda: check_string(body, "description", 512),
        "instructions": lambda: check_string(body, "instructions", 256_000),
        "tools": lambda: check_tools(body.get("tools")),
        "metadata": lambda: check_metadata(body.get("metadata")),
        "temperature": lambda: check_number(body, "temperature", 0, 2),
        "top_p": lambda: check_number(body, "top_p", 0, 1),
        "response_format": lambda: check_response_format(body.get("response_format")),
        "reasoning_effort": lambda: reasoning_effort(body.get("reasoning_effort")),
    }
    check_tool_resources(body.get("tool_resources"))
    return {name: check() for name, check in checks.items() if name in body}


def reasoning_effort(value: Any) -> Any:
    if value not in REASONING_EFFORTS:
        raise invalid("reasoning_effort", f"expected one of 'minimal', 'low', 'medium', 'high', but got {value!r}.")
    return value


async def create(engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    require(body, "model")
    assistant = {
        "id": new_id("asst_"),
        "object": "assistant",
        "created_at": now(),
        "name": None,
        "description": None,
        "model": body["model"],
        "instructions": None,
        "tools": [],
        "tool_resources": {},
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "response_format": "auto",
        "reasoning_effort": None,
    }
    assistant.update({key: value for key, value in _fields(body).items() if value is not None})
    await engine.put(ASSISTANTS, assistant)
    return assistant


async def retrieve(engine: Engine, assistant_id: str) -> dict[str, Any]:
    return await engine.get(ASSISTANTS, assistant_id, "assistant")


async def update(engine: Engine, assistant_id: str, body: dict[str, Any]) -> dict[str, Any]:
    assistant = await retrieve(engine, assistant_id)
    changes = _fields(body)
    if changes.get("model", "") is None:
        changes.pop("model")
    assistant.update(changes)
    await engine.put(ASSISTANTS, assistant)
    return assistant


async def delete(engine: Engine, assistant_id: str) -> dict[str, Any]:
    await retrieve(engine, assistant_id)
    await engine.records.delete_record(engine.tenant, ASSISTANTS, assistant_id)
    return deleted(assistant_id, "assistant")


async def list_all(engine: Engine, params: dict[str, Any]) -> dict[str, Any]:
    page = await engine.page(ASSISTANTS, params)
    return list_page(page.items, page.has_more)
