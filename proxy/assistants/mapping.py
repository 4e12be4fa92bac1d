"""Run parameters -> a Responses create body: where each Assistants knob lands in Responses.

``max_completion_tokens`` -> ``max_output_tokens``, ``response_format`` -> ``text.format``,
``reasoning_effort`` -> ``reasoning.effort``, function tools and named tool choices flattened,
truncation ``auto`` kept (Assistants' default; Responses defaults to ``disabled``).
"""

from __future__ import annotations

from typing import Any


def join_instructions(*parts: str | None) -> str | None:
    """Instructions followed by additions (``additional_instructions``, memory), blank-line separated."""
    texts = [part for part in parts if part]
    return "\n\n".join(texts) if texts else None


def function_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    tool = {
        "type": "function",
        "name": function["name"],
        "parameters": function.get("parameters"),
        "strict": bool(function.get("strict")),
    }
    return {**tool, "description": function["description"]} if function.get("description") else tool


def tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        return {"type": "function", "name": choice["function"]["name"]}
    return choice


def text_format(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    if response_format["type"] != "json_schema":
        return {"format": {"type": response_format["type"]}}
    schema = response_format["json_schema"]
    fmt = {
        "type": "json_schema",
        "name": schema.get("name", "response"),
        "schema": schema.get("schema") or {},
        "strict": bool(schema.get("strict")),
        **({"description": schema["description"]} if schema.get("description") else {}),
    }
    return {"format": fmt}


def response_body(run: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    """The Responses request every response of ``run`` shares (input and mode are added per call)."""
    body: dict[str, Any] = {"model": run["model"], "conversation": conversation_id, "store": True, "truncation": "auto"}
    optional = {
        "instructions": run["instructions"],
        "tools": [function_tool(tool) for tool in run["tools"]] or None,
        "temperature": run["temperature"],
        "top_p": run["top_p"],
        "max_output_tokens": run["max_completion_tokens"],
        "tool_choice": tool_choice(run["tool_choice"]) if run["tools"] else None,
        "parallel_tool_calls": run["parallel_tool_calls"] if run["tools"] else None,
        "text": text_format(run["response_format"]),
        "reasoning": {"effort": run["reasoning_effort"]} if run.get("reasoning_effort") else None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body
