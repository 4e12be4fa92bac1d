"""Token counts with OpenAI's own o200k_base encoding, offline.

``bpe-openai`` embeds the vocabularies in its wheel; tiktoken would fetch them over the network on
first use, which a sidecar without egress (or this project's CI) cannot do.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

ENCODING = "o200k_base"


class _Encoding(Protocol):
    """The part of ``bpe_openai.Encoding`` used here (the package ships no type information)."""

    def encode_ordinary(self, text: str) -> Sequence[int]: ...


@lru_cache(maxsize=1)
def _encoding() -> _Encoding:
    import bpe_openai

    encoding: _Encoding = bpe_openai.get_encoding(ENCODING)
    return encoding


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text))
