"""Ids that go into upstream paths: only what has the shape of an OpenAI id ever does.

The proxy builds upstream paths from ids it did not mint (a thread id in the client's path, an
assistant id in a body, a conversation id remembered for an owner). Pasted unchecked, an id like
``../files/file-abc`` turns a hook's GET or an erasure's DELETE into a call on another object, made
with the caller's or even the operator's key (a confused deputy). :func:`upstream_path` refuses any
id that is not a plain OpenAI-style token before a path is built.
"""

from __future__ import annotations

import re

from proxy.errors import MemproxyError

OPENAI_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
"""``thread_abc``, ``asst_…``, ``conv_…``, ``resp_…``, ``msg_…``, ``file-…``: letters, digits, ``_`` and ``-``."""


class InvalidId(MemproxyError, ValueError):
    """A value that cannot be an OpenAI id: never sent upstream inside a path."""


def is_id(value: object) -> bool:
    return isinstance(value, str) and OPENAI_ID.fullmatch(value) is not None


def check_id(value: object) -> str:
    """``value`` when it has the shape of an OpenAI id; :class:`InvalidId` otherwise (value not echoed)."""
    if not is_id(value):
        raise InvalidId("not an OpenAI id: refused in an upstream path")
    assert isinstance(value, str)
    return value


def upstream_path(template: str, **ids: object) -> str:
    """``template`` with each ``{name}`` filled by a checked id: ``upstream_path("/threads/{t}", t=tid)``."""
    return template.format(**{name: check_id(value) for name, value in ids.items()})
