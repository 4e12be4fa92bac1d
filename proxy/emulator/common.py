"""Helpers every emulator endpoint shares: body parsing, query parameters, pagination.

Errors are :class:`proxy.errors.OpenAIError`, raised anywhere (also in code with no HTTP in it, like
the Responses engine) and worded by :mod:`proxy.assistants.validation` (``invalid``, ``missing``,
``not_found``, ``check_metadata``: one implementation of OpenAI's wording for the project); the
exception handler installed in ``app.py`` renders them, so every endpoint fails the way the real API
does without repeating the envelope.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy import jsonbody
from proxy.assistants.validation import invalid, missing
from proxy.errors import OpenAIError

BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


def now() -> int:
    """Unix seconds, the unit of every ``created``/``created_at`` field."""
    return int(time.time())


UNBOUNDED = 2**62
"""The emulator stands in for the upstream: any number of values (embedding inputs of token ids), but
never a ``RecursionError``: nesting deeper than :data:`proxy.jsonbody.MAX_DEPTH` is malformed to it."""


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; 400 with OpenAI's message otherwise."""
    try:
        body = jsonbody.loads(raw, max_values=UNBOUNDED) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, BAD_JSON) from None
    if not isinstance(body, dict):
        raise OpenAIError(400, BAD_JSON)
    return body


def require_value(value: Any, param: str) -> None:
    """400 ``missing_required_parameter`` for one (possibly nested, e.g. ``tools[0].name``) parameter."""
    if value is None:
        raise missing(param)


def query_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"expected an integer, but got '{raw}' instead.", "invalid_type") from None
    if not low <= value <= high:
        raise invalid(name, f"must be between {low} and {high}, but got {value}.", "integer_out_of_range")
    return value


def query_order(params: Mapping[str, str], default: str = "desc") -> str:
    """The ``order`` query parameter: ``asc`` or ``desc``."""
    order = params.get("order", default)
    if order not in ("asc", "desc"):
        raise invalid("order", f"expected one of 'asc' or 'desc', but got '{order}' instead.")
    return order


def cursor_page(
    items: Sequence[dict[str, Any]],
    params: Mapping[str, str],
    *,
    default_limit: int = 20,
    max_limit: int = 100,
    default_order: str = "desc",
    key: Callable[[dict[str, Any]], str] = lambda item: item["id"],
) -> dict[str, Any]:
    """One page of a cursor-paginated ``list`` object (``after``/``limit``/``order``).

    ``items`` are in creation order. ``first_id``/``last_id`` are null for an empty page, as OpenAI
    answers (the spec types them as strings, which no empty page can satisfy).
    """
    limit = query_int(params, "limit", default_limit, 1, max_limit)
    ordered: list[dict[str, Any]] = list(items) if query_order(params, default_order) == "asc" else list(items)[::-1]
    after = params.get("after")
    if after:
        ids = [key(item) for item in ordered]
        if after not in ids:
            raise invalid("after", f"no object with id '{after}' in this list.")
        ordered = ordered[ids.index(after) + 1 :]
    return list_object(ordered[:limit], has_more=len(ordered) > limit, key=key)


def list_object(
    data: Sequence[dict[str, Any]],
    *,
    has_more: bool = False,
    key: Callable[[dict[str, Any]], str] = lambda item: item["id"],
) -> dict[str, Any]:
    """A ``{"object": "list", ...}`` page with ``first_id``/``last_id`` (null when empty)."""
    return {
        "object": "list",
        "data": list(data),
        "first_id": key(data[0]) if data else None,
        "last_id": key(data[-1]) if data else None,
        "has_more": has_more,
    }
