"""Token counts with OpenAI's own o200k_base encoding, offline.

``bpe-openai`` embeds the vocabularies in its wheel; tiktoken would fetch them over the network on
first use, which a sidecar without egress (or this project's CI) cannot do.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

ENCODING = "o200k_base"


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text))
