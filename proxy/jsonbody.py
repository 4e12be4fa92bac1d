"""Untrusted JSON bodies, read and parsed within bounds: size, nesting depth and number of values.

Clients' JSON is parsed in three places: the hooks (to find the user and add the block), the
Assistants bridge and the memory API. Python's parser recurses once per nesting level (100,000
levels end in a ``RecursionError``), and every value becomes an object of 50 to 200 bytes (a 4 MB
body of ``{},`` is 90 MB of dicts). So a body is measured before it is parsed, with byte operations
that run in C and allocate at most a copy of the body: :func:`measure` counts its values and its
depth (strings stripped first, so brackets and commas inside them do not count), and :func:`loads`
refuses, with :class:`Refused`, what exceeds :data:`MAX_DEPTH` or :data:`MAX_VALUES` before
``json.loads`` sees it. A ``RecursionError`` can therefore not happen; should one still, it is a
:class:`Refused` too, never an escaping exception.

What a caller does with a refusal is its own: the hooks forward the body untouched without memory
(``x-memory-reason``), the bridge answers OpenAI's 400, the memory API a 400 (413 for the size).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Literal

from starlette.requests import Request

from proxy.errors import MemproxyError

MAX_DEPTH = 100
"""Deepest nesting accepted (an object or array is one level). OpenAI's structured outputs allow
10 levels of schema, about 25 levels of request body; nothing a client sends needs 100."""

MAX_VALUES = 100_000
"""Most values (containers, keys, scalars) accepted in one body: a chat request with 2,048 messages
and 128 tools holds a few thousand. 100,000 parsed values are at most about 15 MB of objects."""

Reason = Literal["body-too-large", "body-too-deep", "body-too-complex"]


class Refused(MemproxyError, ValueError):
    """A body outside the bounds; ``reason`` is sent as ``x-memory-reason`` by the hooks."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


# A string, its closing quote optional so an unterminated one is consumed to the end: the classes are
# disjoint, so matching is linear (no backtracking), whatever the input.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _count(data: bytes) -> tuple[int, int]:
    """(opening brackets, values) of ``data``: containers + separators + 1 bounds the values from above."""
    opening = data.count(b"[") + data.count(b"{")
    return opening, opening + data.count(b",") + data.count(b":") + 1


def measure(raw: bytes, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Reason | None:
    """Why ``raw`` must not be parsed (too deep, too many values), or None when it may be.

    A fast path first: counted with the strings' contents included, the numbers can only be too high,
    so a body within them is within bounds (almost every real body, no copy made). Otherwise strings
    are stripped, the depth walked over the brackets alone and the values counted exactly.
    """
    opening, values = _count(raw)
    if opening <= max_depth and values <= max_values:
        return None
    if (raw.count(b'"') - raw.count(b'\\"')) // 2 > max_values:  # at least that many strings: no need to strip them
        return "body-too-complex"
    bare = _STRING.sub(b"", raw)
    opening, values = _count(bare)
    if opening > max_depth:
        brackets = bare.translate(None, _NOT_BRACKETS)
        walked = brackets[: 2 * max_values]  # a body within bounds has no more: the walk stays bounded
        if max(accumulate(_STEP[b] for b in walked)) > max_depth:
            return "body-too-deep"
        if len(brackets) > len(walked):
            return "body-too-complex"
    return "body-too-complex" if values > max_values else None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES, strict: bool = False) -> Any:
    """``raw`` parsed as UTF-8 JSON, if within bounds.

    Raises :class:`Refused` beyond the bounds, ``ValueError`` when it is not JSON (``strict``: also
    ``NaN`` and ``Infinity``, which Python accepts and JSON does not).
    """
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):  # UTF-16 and -32 would defeat the byte counts
        raise ValueError("not UTF-8")
    problem = measure(raw, max_depth=max_depth, max_values=max_values)
    if problem == "body-too-deep":
        raise Refused(problem, f"The JSON body is nested more than {max_depth} levels deep.")
    if problem is not None:
        raise Refused(problem, f"The JSON body holds more than {max_values} values.")
    try:
        if strict:
            return json.loads(raw, parse_constant=_no_constants)
        return json.loads(raw)
    except RecursionError:  # not reachable past measure(); kept so it can never escape
        raise Refused("body-too-deep", f"The JSON body is nested more than {max_depth} levels deep.") from None


def too_large(max_bytes: int) -> Refused:
    return Refused("body-too-large", f"The request body is larger than {max_bytes} bytes.")


def declared_too_large(request: Request, max_bytes: int) -> bool:
    """Whether the request's ``Content-Length`` already says the body is larger than ``max_bytes``."""
    length = request.headers.get("content-length", "").strip()
    return length.isdigit() and (len(length) > 18 or int(length) > max_bytes)


async def read_capped(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused (:class:`Refused`, ``body-too-large``) as soon as it exceeds ``max_bytes``.

    It consumes the stream: for a body that may still have to be forwarded, use ``request.body()``
    after :func:`declared_too_large` instead.
    """
    if declared_too_large(request, max_bytes):
        raise too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)
