"""Object ids shaped like OpenAI's (``resp_…``, ``msg_…``, ``call_…``, ``chatcmpl-…``, ``file-…``).

Ids are random, not derived from content: two identical requests must still create two objects.
Clients sometimes check prefixes, so each kind keeps OpenAI's prefix and separator.
"""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

# kind -> (prefix, body): body "hexN" is N hex digits, "alnumN" N letters/digits.
_FORMATS = {
    "chat": ("chatcmpl-", "alnum29"),
    "response": ("resp_", "hex48"),
    "message": ("msg_", "hex48"),
    "function_call": ("fc_", "hex48"),
    "function_call_output": ("fco_", "hex48"),
    "call": ("call_", "alnum24"),
    "conversation": ("conv_", "hex48"),
    "file": ("file-", "alnum22"),
    "request": ("req_", "hex32"),
}


def new_id(kind: str) -> str:
    """A fresh id for an object of ``kind`` (chat, response, message, call, file, ...)."""
    prefix, body = _FORMATS[kind]
    size = int(body.lstrip("hexalnum"))
    if body.startswith("hex"):
        return prefix + secrets.token_hex(size // 2)
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(size))
