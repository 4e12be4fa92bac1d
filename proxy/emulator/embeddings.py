"""``/v1/embeddings``: deterministic unit vectors derived from a hash of the input.

The same text (and model) always gives the same vector, different texts give unrelated ones:
similar texts are NOT close, so the emulator fits tests of plumbing (sizes, encodings, caching,
which text was embedded), not of retrieval quality. Like OpenAI's text-embedding-3 models, a
``dimensions`` vector is the full-size vector truncated and re-normalised. Full sizes: 1536 for
text-embedding-3-small and text-embedding-ada-002, 3072 for text-embedding-3-large, 1536 for any
other name; ada-002 rejects ``dimensions``. ``encoding_format`` ``base64`` sends little-endian
float32 bytes, as OpenAI does (and as the openai SDK asks for by default).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.assistants.validation import invalid, require
from proxy.emulator.common import parse_json_body
from proxy.emulator.model import count_tokens
from proxy.emulator.models import EMBEDDING_DIMENSIONS
from proxy.errors import OpenAIError

DEFAULT_DIMENSIONS = 1536
MAX_INPUTS = 2048


def embed(text: str, model: str, dimensions: int | None = None) -> list[float]:
    """The unit vector for ``text``: hash-seeded, full size for ``model``, truncated to ``dimensions``."""
    size = EMBEDDING_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    raw = hashlib.shake_256(f"{model}\0{text}".encode()).digest(4 * size)
    full = [(value / 2**31) - 1.0 for value in struct.unpack(f"<{size}I", raw)]
    vector = full[: dimensions or size]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what ``encoding_format=base64`` returns."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _inputs(value: Any) -> list[tuple[str, int]]:
    """``(text to hash, token count)`` for a string, list of strings, token array or list of token arrays."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise invalid("input", "expected a non-empty string or array.", "invalid_type")
    if all(isinstance(token, int) for token in value):
        value = [value]
    if len(value) > MAX_INPUTS:
        raise invalid("input", f"array too long; at most {MAX_INPUTS} inputs are allowed.", "array_above_max_length")
    out = []
    for index, item in enumerate(value):
        if isinstance(item, str) and item:
            out.append((item, count_tokens(item)))
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            out.append(("tokens:" + ",".join(map(str, item)), len(item)))
        else:
            raise invalid(f"input[{index}]", "expected a non-empty string or array of integer tokens.")
    return out


def _dimensions(body: dict[str, Any], model: str) -> int | None:
    dimensions = body.get("dimensions")
    if dimensions is None:
        return None
    if model == "text-embedding-ada-002":
        raise OpenAIError(400, "This model does not support specifying dimensions.", param="dimensions")
    full = EMBEDDING_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= full:
        raise invalid("dimensions", f"must be an integer between 1 and {full}.", "invalid_value")
    return dimensions


async def create(request: Request) -> Response:
    """``POST /embeddings``."""
    body = parse_json_body(await request.body())
    require(body, "model", "input")
    model = body["model"]
    inputs = _inputs(body["input"])
    dimensions = _dimensions(body, model)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format", f"expected 'float' or 'base64', but got '{encoding}'.")
    data = []
    for index, (text, _) in enumerate(inputs):
        vector = embed(text, model, dimensions)
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_base64(vector) if encoding == "base64" else vector,
            }
        )
    tokens = sum(count for _, count in inputs)
    return JSONResponse(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


ROUTES = [Route("/v1/embeddings", create, methods=["POST"])]
