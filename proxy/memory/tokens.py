"""Token counts with OpenAI's own o200k_base encoding, offline, and the recall query's cap.

``bpe-openai`` embeds the vocabularies in its wheel; tiktoken would fetch them over the network on
first use, which a sidecar without egress (or this project's CI) cannot do.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

ENCODING = "o200k_base"


QUERY_MAX_TOKENS = 512
"""Longest recall query, in o200k tokens: the embedding model reads 512 of its own at most, and a few
hundred words find a user's facts as well as a whole document would."""

QUERY_MAX_CHARS = 8 * QUERY_MAX_TOKENS
"""Characters kept before the query is tokenized at all, so a 50 MB message costs the tokenizer 4 KB:
a token is rarely longer than 8 characters, so the token cap still decides."""


class _Encoding(Protocol):
    """The part of ``bpe_openai.Encoding`` used here (the package ships no type information)."""

    def encode_ordinary(self, text: str) -> Sequence[int]: ...

    def decode_bytes(self, tokens: Sequence[int]) -> bytes: ...


@lru_cache(maxsize=1)
def _encoding() -> _Encoding:
    import bpe_openai

    encoding: _Encoding = bpe_openai.get_encoding(ENCODING)
    return encoding


def load_encoding() -> None:
    """Load the o200k vocabulary now (it takes a while, once): callers do it at start, off the event loop,
    so the first request's recall does not pay for it inside its deadline."""
    _encoding()


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text))


def cap_query(text: str, *, max_tokens: int = QUERY_MAX_TOKENS, max_chars: int = QUERY_MAX_CHARS) -> str:
    """The end of ``text``: its last ``max_chars`` characters, then its last ``max_tokens`` tokens.

    The end, because a recall query is the turn's user messages oldest first: the newest message, and
    the question that usually follows a long paste, are last.
    """
    if len(text) > max_chars:
        text = text[-max_chars:]
    tokens = _encoding().encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text
    # a cut inside a multi-byte character leaves a stray byte at the start: dropped
    return _encoding().decode_bytes(tokens[-max_tokens:]).decode("utf-8", errors="ignore")
