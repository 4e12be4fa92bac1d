"""Dense embedders: local ONNX models through fastembed, or the upstream's ``/v1/embeddings``.

Both expose ``dim`` and async ``embed_query`` / ``embed_documents``. An upstream API key is passed per
call and only ever placed in that request's ``Authorization`` header: it is never stored or logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple, runtime_checkable

import httpx2

from proxy.errors import MemproxyError

if TYPE_CHECKING:
    from proxy.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: Output sizes of well-known upstream models (used when ``embed_dim`` is not set).
KNOWN_UPSTREAM_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


CHARS_PER_TOKEN = 16
"""Characters a local embedder keeps per token of its model's input limit, cutting before it tokenizes: a
word piece is rarely longer, so the model sees what it would have seen, and a 50 MB text costs the
tokenizer 8 KB instead of gigabytes (it encodes the whole text before truncating)."""

DEFAULT_MAX_TOKENS = 512
"""A local model's input limit when its tokenizer does not say (MiniLM's)."""

UPSTREAM_MAX_TOKENS = 8191
UPSTREAM_MAX_CHARS = 4 * UPSTREAM_MAX_TOKENS
"""OpenAI's embedding models take 8,191 tokens and refuse (not truncate) longer inputs: 4 characters per
token is about where an English text reaches that, so what is cut would have been refused anyway."""


def clip(text: str, max_chars: int) -> str:
    """``text`` cut to its first ``max_chars`` characters."""
    return text if len(text) <= max_chars else text[:max_chars]


def _max_tokens(model: Any) -> int:
    """The input limit fastembed's tokenizer truncates at, or :data:`DEFAULT_MAX_TOKENS`."""
    truncation = getattr(getattr(model, "tokenizer", None), "truncation", None)
    limit = truncation.get("max_length") if isinstance(truncation, dict) else None
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS


class EmbeddingError(MemproxyError, RuntimeError):
    """The embedder could not produce vectors (model missing, upstream error, wrong size)."""


@runtime_checkable
class Embedder(Protocol):
    dim: int
    name: str

    async def embed_query(self, text: str, *, api_key: str | None = None) -> list[float]: ...

    async def embed_documents(self, texts: Sequence[str], *, api_key: str | None = None) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


class LocalEmbedder:
    """fastembed ``TextEmbedding`` run on a dedicated worker thread, with an LRU cache of query vectors.

    ``model_path`` (a directory holding ``model.onnx`` and the tokenizer files) loads with no download;
    ``model_name`` still picks the model's pooling and normalization from fastembed's registry.
    """

    def __init__(
        self,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        *,
        model_path: Path | str | None = None,
        cache_size: int = 1024,
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        from fastembed import TextEmbedding

        kwargs: dict[str, Any] = {}
        if model_path is not None:
            path = Path(model_path).expanduser()
            if not (path / "model.onnx").exists() and not any(path.glob("*.onnx")):
                raise EmbeddingError(f"no ONNX model in {path} (set MEMPROXY_EMBED_MODEL_PATH to a model directory)")
            kwargs["specific_model_path"] = str(path)
        try:
            self._model = TextEmbedding(model_name, threads=threads, **kwargs)
        except Exception as exc:
            raise EmbeddingError(f"cannot load embedding model {model_name!r}: {exc}") from exc
        self.name = model_name
        self.dim = int(self._model.embedding_size)
        self.batch_size = batch_size
        self.max_chars = _max_tokens(getattr(self._model, "model", None)) * CHARS_PER_TOKEN
        self._cache: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-embed")
        self.cache_hits = 0
        self.cache_misses = 0

    async def _run(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _embed_queries(self, texts: list[str]) -> list[tuple[float, ...]]:
        return [tuple(float(x) for x in v) for v in self._model.query_embed(texts, batch_size=self.batch_size)]

    def _embed_passages(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in v] for v in self._model.passage_embed(texts, batch_size=self.batch_size)]

    async def embed_query(self, text: str, *, api_key: str | None = None) -> list[float]:
        text = clip(text, self.max_chars)  # also the cache key: the cache never holds a long text
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            self.cache_hits += 1
            return list(cached)
        self.cache_misses += 1
        (vector,) = await self._run(self._embed_queries, [text])
        if self._cache_size > 0:
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return list(vector)

    async def embed_documents(self, texts: Sequence[str], *, api_key: str | None = None) -> list[list[float]]:
        if not texts:
            return []
        return await self._run(self._embed_passages, [clip(text, self.max_chars) for text in texts])

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


class UpstreamEmbedder:
    """``POST {base_url}/embeddings`` with a client the caller owns (the proxy's shared httpx2 client)."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        *,
        base_url: str,
        model: str = "text-embedding-3-small",
        dim: int | None = None,
        send_dimensions: bool = False,
        batch_size: int = 256,
    ) -> None:
        resolved = dim or KNOWN_UPSTREAM_DIMS.get(model)
        if resolved is None:
            raise EmbeddingError(f"unknown output size for upstream embedding model {model!r}: set MEMPROXY_EMBED_DIM")
        self.client = client
        self.url = base_url.rstrip("/") + "/embeddings"
        self.name = model
        self.dim = int(resolved)
        self.send_dimensions = send_dimensions
        self.batch_size = batch_size
        self.max_chars = UPSTREAM_MAX_CHARS

    async def _post(self, texts: list[str], api_key: str | None) -> list[list[float]]:
        texts = [clip(text, self.max_chars) for text in texts]
        body: dict[str, Any] = {"model": self.name, "input": texts, "encoding_format": "float"}
        if self.send_dimensions:
            body["dimensions"] = self.dim
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = await self.client.post(self.url, json=body, headers=headers)
        except httpx2.HTTPError as exc:
            raise EmbeddingError(f"upstream embeddings request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise EmbeddingError(f"upstream embeddings answered HTTP {response.status_code}")
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"upstream embeddings response is malformed: {type(exc).__name__}") from None
        if len(vectors) != len(texts):
            raise EmbeddingError(f"upstream returned {len(vectors)} embeddings for {len(texts)} inputs")
        for vector in vectors:
            if len(vector) != self.dim:
                raise EmbeddingError(f"upstream model {self.name!r} returned size {len(vector)}, expected {self.dim}")
        return vectors

    async def embed_query(self, text: str, *, api_key: str | None = None) -> list[float]:
        (vector,) = await self._post([text], api_key)
        return vector

    async def embed_documents(self, texts: Sequence[str], *, api_key: str | None = None) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            out.extend(await self._post(list(texts[i : i + self.batch_size]), api_key))
        return out

    async def aclose(self) -> None:
        """The client belongs to the caller; nothing to release."""


def make_embedder(settings: Settings, http_client: httpx2.AsyncClient | None = None) -> Embedder:
    """The embedder ``settings.embedder`` names. The upstream one needs the proxy's httpx2 client."""
    if settings.embedder == "upstream":
        if http_client is None:
            raise EmbeddingError("the upstream embedder needs an httpx2.AsyncClient")
        return UpstreamEmbedder(
            http_client,
            base_url=settings.upstream_url,
            model=settings.upstream_embed_model,
            dim=settings.embed_dim,
            send_dimensions=settings.embed_dim is not None,
        )
    return LocalEmbedder(
        settings.embed_model,
        model_path=settings.embed_model_path,
        cache_size=settings.embed_cache_size,
        threads=settings.embed_threads,
    )
