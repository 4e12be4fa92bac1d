"""Request fields both Chat Completions and Responses turn into model inputs the same way.

``response_format`` (chat) and ``text.format`` (responses) differ only in nesting, as do their
function ``tool_choice`` objects; reading them here keeps the two endpoints in agreement.
"""

from __future__ import annotations

from typing import Any

from proxy.assistants.validation import invalid
from proxy.emulator.common import require_value
from proxy.emulator.model import OutputFormat

FORMAT_TYPES = ("text", "json_object", "json_schema")


def output_format(fmt: Any, param: str) -> OutputFormat:
    """``{"type": "json_schema", "schema"|"json_schema": {...}}`` etc. -> :class:`OutputFormat`."""
    if fmt is None:
        return OutputFormat()
    if not isinstance(fmt, dict):
        raise invalid(param, "expected an object.", "invalid_type")
    kind = fmt.get("type", "text")
    if kind not in FORMAT_TYPES:
        raise invalid(f"{param}.type", f"expected one of 'text', 'json_object', 'json_schema', but got '{kind}'.")
    if kind != "json_schema":
        return OutputFormat(kind)
    nested = fmt.get("json_schema")
    if isinstance(nested, dict):  # chat: {"type": "json_schema", "json_schema": {"name", "schema"}}
        require_value(nested.get("name"), f"{param}.json_schema.name")
        return OutputFormat("json_schema", nested.get("schema") or {})
    require_value(fmt.get("name"), f"{param}.name")
    require_value(fmt.get("schema"), f"{param}.schema")
    return OutputFormat("json_schema", fmt["schema"])


def tool_choice(choice: Any, param: str = "tool_choice") -> tuple[str, str | None]:
    """``(mode, forced tool name)``: mode is auto | none | required."""
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid(param, f"expected one of 'none', 'auto', 'required', but got '{choice}'.")
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        require_value(name, f"{param}.function.name" if "function" in choice else f"{param}.name")
        return "required", name
    return "auto", None
