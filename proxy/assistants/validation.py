"""Request checks that answer OpenAI-shaped 400s, so SDK users see the errors the real API gave.

Everything here raises :class:`proxy.errors.OpenAIError`, which the app's exception handler turns
into the ``{"error": ...}`` envelope. Unsupported features are refused here, by name, rather than
silently dropped. The emulator words its own 400s with the same builders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from proxy.errors import OpenAIError

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def invalid(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    """400 for a present but unusable parameter."""
    return OpenAIError(400, f"Invalid '{param}': {message}", code=code, param=param)


def unsupported(param: str, what: str) -> OpenAIError:
    """400 naming a feature this implementation cannot map onto the Responses API."""
    message = (
        f"Unsupported parameter '{param}': {what} is not supported by this Assistants API "
        "implementation, which runs on the Responses API."
    )
    return OpenAIError(400, message, code="unsupported_parameter", param=param)


def not_found(kind: str, object_id: str, *, param: str | None = None) -> OpenAIError:
    """404 worded as OpenAI words it: ``No thread found with id 'thread_x'.``"""
    return OpenAIError(404, f"No {kind} found with id '{object_id}'.", param=param)


def missing(param: str) -> OpenAIError:
    """400 ``missing_required_parameter`` for one (possibly nested, e.g. ``tools[0].name``) parameter."""
    return OpenAIError(400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param)


def require(body: Mapping[str, Any], *fields: str) -> None:
    """400 naming the first field of ``body`` that is absent (or null), as OpenAI does."""
    for name in fields:
        if body.get(name) is None:
            raise missing(name)


def check_object(body: Any, param: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid(param, "expected an object.", "invalid_type")
    return body


def check_string(body: Mapping[str, Any], name: str, max_length: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(name, f"expected a string, but got {type(value).__name__} instead.", "invalid_type")
    if max_length is not None and len(value) > max_length:
        raise invalid(
            name,
            f"string too long. Expected a string with maximum length {max_length}, but got a "
            f"string with length {len(value)} instead.",
            "string_above_max_length",
        )
    return value


def check_number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(name, "expected a number.", "invalid_type")
    if not low <= value <= high:
        raise invalid(name, f"must be between {low:g} and {high:g}, but got {value}.", "decimal_out_of_range")
    return value


def check_int(body: Mapping[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, "expected an integer.", "invalid_type")
    if value < low:
        raise invalid(name, f"must be at least {low}, but got {value}.", "integer_below_min_value")
    return value


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata limits: at most 16 pairs, keys up to 64 chars, string values up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise invalid(param, "expected an object with string values.", "invalid_type")
    if len(value) > METADATA_MAX_KEYS:
        raise invalid(
            param,
            f"too many properties. Expected an object with at most {METADATA_MAX_KEYS} "
            f"properties, but got an object with {len(value)} properties instead.",
            "object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY:
            raise invalid(
                f"{param}.{key[:METADATA_MAX_KEY]}",
                f"key too long. Expected a key with maximum length "
                f"{METADATA_MAX_KEY}, but got a key with length {len(key)} instead.",
                "string_above_max_length",
            )
        if len(item) > METADATA_MAX_VALUE:
            raise invalid(
                f"{param}.{key}",
                f"string too long. Expected a string with maximum length "
                f"{METADATA_MAX_VALUE}, but got a string with length {len(item)} instead.",
                "string_above_max_length",
            )
    return dict(value)


def check_tools(value: Any, param: str = "tools") -> list[dict[str, Any]]:
    """Assistants tools, normalised; only ``function`` tools can run on Responses here."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(param, "expected an array.", "invalid_type")
    if len(value) > 128:
        raise invalid(param, "array too long; at most 128 tools are allowed.", "array_above_max_length")
    return [_tool(tool, f"{param}[{index}]") for index, tool in enumerate(value)]


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise invalid(param, "expected an object.", "invalid_type")
    kind = tool.get("type")
    if kind in ("file_search", "code_interpreter"):
        raise unsupported(f"{param}.type", f"the '{kind}' tool")
    if kind != "function":
        raise invalid(
            f"{param}.type", f"expected one of 'code_interpreter', 'file_search', 'function', but got {kind!r}."
        )
    function = tool.get("function")
    if not isinstance(function, dict) or function.get("name") is None:
        raise missing(f"{param}.function.name")
    if not isinstance(function["name"], str) or not FUNCTION_NAME.match(function["name"]):
        raise invalid(f"{param}.function.name", "must match ^[a-zA-Z0-9_-]{1,64}$.")
    normalized = {
        "name": function["name"],
        "parameters": function.get("parameters") or {"type": "object", "properties": {}},
        "strict": bool(function.get("strict", False)),
    }
    if isinstance(function.get("description"), str):
        normalized["description"] = function["description"]
    return {"type": "function", "function": normalized}


def check_tool_resources(value: Any, param: str = "tool_resources") -> None:
    """Tool resources feed file_search / code_interpreter, which are unsupported: only empty ones pass."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid(param, "expected an object.", "invalid_type")
    for name, resource in value.items():
        ids = [v for v in (resource or {}).values() if v] if isinstance(resource, dict) else [resource]
        if ids:
            raise unsupported(f"{param}.{name}", f"'{name}' tool resources")


def check_response_format(value: Any, param: str = "response_format") -> Any:
    if value is None or value == "auto":
        return value
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid(param, "expected 'auto' or an object with type 'text', 'json_object' or 'json_schema'.")
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise missing(f"{param}.json_schema")
    return value


def check_tool_choice(value: Any, param: str = "tool_choice") -> Any:
    if value is None or value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = (value.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise missing(f"{param}.function.name")
        return value
    if isinstance(value, dict) and value.get("type") in ("file_search", "code_interpreter"):
        raise unsupported(f"{param}.type", f"the '{value['type']}' tool")
    raise invalid(param, "expected 'none', 'auto', 'required' or a named function tool.")


def check_list_params(params: Mapping[str, str]) -> dict[str, Any]:
    """``limit`` (1-100, default 20), ``order`` (default desc), ``after``, ``before``."""
    raw = params.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", f"expected an integer, but got '{raw}' instead.", "invalid_type") from None
    if not 1 <= limit <= 100:
        raise invalid("limit", f"must be between 1 and 100, but got {limit}.", "integer_out_of_range")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("order", f"expected one of 'asc' or 'desc', but got '{order}' instead.")
    after, before = params.get("after") or None, params.get("before") or None
    if after and before:
        raise OpenAIError(400, "Only one of 'after' and 'before' may be given.", param="before")
    return {"limit": limit, "order": order, "after": after, "before": before}
