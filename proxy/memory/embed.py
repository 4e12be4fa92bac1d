"""Dense embedders: local ONNX models through fastembed, or the upstream's ``/v1/embeddings``.

Both expose ``dim`` and async ``embed_query`` / ``embed_documents``. An upstream API key is passed per
call and only ever placed in that request's ``Authorization`` header: it is never stored or logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple, runtime_checkable

import httpx2

from proxy.errors import MemproxyError

from .quantize import MODEL_FILE, REQUIRED_FILES, QuantizeError, int8_model_dir

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

    def expected_wait(self) -> float:
        """Seconds a query asked now would wait for its vector, as far as the embedder can tell (0: no queue)."""
        ...

    async def aclose(self) -> None: ...


QUERY_CHUNK = 8
"""Queries of a batch run through the float model this many at a time, shortest first: each chunk is padded
to its longest query, so similar lengths together waste little. The int8 model runs each text alone: its
activations are quantized with one scale per input tensor, so a text's vector would depend on the texts
batched with it (cosine down to 0.977 measured) and a recall's result on the traffic around it."""

INITIAL_SECONDS_PER_QUERY = 0.002
"""A local query's cost before any has been measured (int8 MiniLM on one core: 1.4-2.7 ms)."""
WAIT_SMOOTHING = 0.2
"""Weight of the latest model run in the moving average of seconds per query."""

DEFAULT_MODEL_CACHE = Path("~/.cache/memproxy/models")
"""Where a model's int8 copy goes when the caller names no directory (the proxy: ``<data_dir>/models``)."""

MODEL_FILES_HINT = (
    "set MEMPROXY_EMBED_MODEL_PATH to a directory holding the model's ONNX export: "
    f"{', '.join(REQUIRED_FILES)} (config.json and special_tokens_map.json when the model has them)"
)


def _check_model_dir(path: Path) -> None:
    """Refuse a model directory fastembed would fail on, naming the setting and the missing files (an ONNX
    file under another name than model.onnx is left for fastembed to find)."""
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if MODEL_FILE in missing and any(path.glob("*.onnx")):
        missing.remove(MODEL_FILE)
    if missing:
        what = "no ONNX model" if MODEL_FILE in missing else "an incomplete model directory"
        raise EmbeddingError(f"{what} in {path}: {', '.join(missing)} missing; {MODEL_FILES_HINT}")


class LocalEmbedder:
    """fastembed ``TextEmbedding`` run on a dedicated worker thread, with an LRU cache of query vectors.

    ``model_path`` (a directory holding ``model.onnx`` and the tokenizer files) loads with no download;
    ``model_name`` still picks the model's pooling and normalization from fastembed's registry. With
    ``quantize`` the model runs as its int8 copy (:mod:`proxy.memory.quantize`, made once under
    ``cache_dir``); when that copy cannot be made the float model is used and a warning logged.

    Queries are micro-batched: a query that finds the model idle runs at once, alone; queries that
    arrive while it is busy wait (``batch_window`` seconds at most beyond that) and go together as
    one batch of at most ``max_batch``: one hop to the model thread and one wake-up of the event loop
    for all of them. A text's vector never depends on its batch (see :data:`QUERY_CHUNK`), and a
    batch that fails fails only the queries in it. A query whose caller gave up (its recall deadline
    passed) is skipped, even inside a batch already running; :meth:`expected_wait` tells a caller
    how long a new query would queue, so under overload it can give up before costing anything.
    """

    def __init__(
        self,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        *,
        model_path: Path | str | None = None,
        cache_size: int = 1024,
        batch_size: int = 64,
        threads: int | None = None,
        quantize: bool = False,
        cache_dir: Path | None = None,
        max_batch: int = 32,
        batch_window: float = 0.0,
    ) -> None:
        source = Path(model_path).expanduser() if model_path is not None else None
        if source is not None:
            _check_model_dir(source)
        self._model = self._load(model_name, source, threads)
        self.quantized = False
        if quantize:
            source = source or Path(self._model.model._model_dir)
            try:
                int8 = int8_model_dir(source, (cache_dir or DEFAULT_MODEL_CACHE).expanduser())
                self._model = self._load(model_name, int8, threads)
                self.quantized = True
            except (QuantizeError, EmbeddingError) as exc:
                log.warning("embedding with the float model: %s", exc)
        self.name = model_name
        self.variant = "int8" if self.quantized else "float"
        self.dim = int(self._model.embedding_size)
        self.batch_size = batch_size
        self.max_batch = max(1, max_batch)
        self.batch_window = max(0.0, batch_window)
        self.max_chars = _max_tokens(getattr(self._model, "model", None)) * CHARS_PER_TOKEN
        self._cache: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-embed")
        self._waiting: list[tuple[str, asyncio.Future[tuple[float, ...]]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.cache_hits = 0
        self.cache_misses = 0
        self.batches = 0  # query batches run, and the queries they held
        self.batched_queries = 0
        self.document_calls = 0
        self._pending = 0  # queries asked and not yet answered (or given up)
        self._seconds_per_query = INITIAL_SECONDS_PER_QUERY  # moving average over the batches run

    @staticmethod
    def _load(model_name: str, path: Path | None, threads: int | None) -> Any:
        from fastembed import TextEmbedding

        kwargs: dict[str, Any] = {"specific_model_path": str(path)} if path is not None else {}
        try:
            return TextEmbedding(model_name, threads=threads, **kwargs)
        except Exception as exc:
            where = f"from {path}" if path is not None else "(download failed: no network?)"
            raise EmbeddingError(
                f"cannot load embedding model {model_name!r} {where}: {exc}; {MODEL_FILES_HINT}"
            ) from exc

    async def _run(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _embed_queries(self, texts: list[str], wanted: Callable[[int], bool]) -> list[tuple[float, ...]]:
        """Vectors of ``texts`` in their order (``()`` for a text no longer ``wanted``), shortest first.

        The float model runs chunks of :data:`QUERY_CHUNK`; the int8 model one text at a time, each
        checked against ``wanted`` just before it runs (read from this worker thread: a caller that
        gave up while the batch ran costs nothing more). The model's seconds per text feed
        :meth:`expected_wait` (timed here, on the model's thread: the event loop's delays are not
        the model's).
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[tuple[float, ...]] = [()] * len(texts)
        chunk = self._chunk(QUERY_CHUNK)
        for start in range(0, len(order), chunk):
            indices = [i for i in order[start : start + chunk] if wanted(i)]
            if not indices:
                continue
            started = time.perf_counter()
            vectors = self._model.query_embed([texts[i] for i in indices], batch_size=chunk)
            for i, vector in zip(indices, vectors, strict=True):
                out[i] = tuple(vector.tolist())
            per_text = (time.perf_counter() - started) / len(indices)
            self._seconds_per_query += WAIT_SMOOTHING * (per_text - self._seconds_per_query)
        return out

    def _embed_passages(self, texts: list[str]) -> list[list[float]]:
        return [v.tolist() for v in self._model.passage_embed(texts, batch_size=self._chunk(self.batch_size))]

    def _chunk(self, size: int) -> int:
        """Texts per model run: one on the int8 model (see :data:`QUERY_CHUNK`), else ``size``."""
        return 1 if self.quantized else size

    async def embed_query(self, text: str, *, api_key: str | None = None) -> list[float]:
        text = clip(text, self.max_chars)  # also the cache key: the cache never holds a long text
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            self.cache_hits += 1
            return list(cached)
        self.cache_misses += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[float, ...]] = loop.create_future()
        if self._drainer is not None and self._drainer.get_loop() is not loop:  # a new event loop (tests, bench)
            self._waiting = [(t, f) for t, f in self._waiting if f.get_loop() is loop]
            self._drainer = None
        self._waiting.append((text, future))
        self._pending += 1
        future.add_done_callback(self._settled)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain(), name="memproxy-embed-batch")
        vector = await future
        if self._cache_size > 0:
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return list(vector)

    def _settled(self, _: asyncio.Future[tuple[float, ...]]) -> None:
        self._pending -= 1

    def expected_wait(self) -> float:
        """The queries not yet answered times the recent seconds per query: the wait of one asked now."""
        return self._pending * self._seconds_per_query

    async def _drain(self) -> None:
        """Run the waiting queries, a bounded batch at a time, until none is left."""
        first = True
        while self._waiting:
            if self.batch_window > 0 and not first and len(self._waiting) < self.max_batch:
                await asyncio.sleep(self.batch_window)
            first = False
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            batch = [(text, future) for text, future in batch if not future.done()]  # a caller gave up
            if not batch:
                continue
            self.batches += 1
            self.batched_queries += len(batch)
            futures = [future for _, future in batch]
            try:
                vectors = await self._run(self._embed_queries, [text for text, _ in batch], _still_wanted(futures))
            except Exception as exc:  # noqa: BLE001 - handed to this batch's callers, and only to them
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for future, vector in zip(futures, vectors, strict=True):
                if vector and not future.done():
                    future.set_result(vector)

    async def embed_documents(self, texts: Sequence[str], *, api_key: str | None = None) -> list[list[float]]:
        if not texts:
            return []
        self.document_calls += 1
        return await self._run(self._embed_passages, [clip(text, self.max_chars) for text in texts])

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _still_wanted(futures: list[asyncio.Future[tuple[float, ...]]]) -> Callable[[int], bool]:
    """Whether the caller of query ``i`` still waits for it (checked from the model's thread)."""
    return lambda i: not futures[i].done()


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

    def expected_wait(self) -> float:
        """No queue of its own: each query is its own upstream call."""
        return 0.0

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
    return local_embedder(settings)


def local_embedder(
    settings: Settings,
    *,
    model_path: Path | None = None,
    cache_size: int | None = None,
    cache_dir: Path | None = None,
) -> LocalEmbedder:
    """The local embedder ``settings`` describe; the keywords override the model directory, the query
    cache's size and where the int8 copy goes (default ``<data_dir>/models``)."""
    return LocalEmbedder(
        settings.embed_model,
        model_path=model_path or settings.embed_model_path,
        cache_size=settings.embed_cache_size if cache_size is None else cache_size,
        threads=settings.embed_threads,
        quantize=settings.embed_quantize == "int8",
        cache_dir=cache_dir or settings.data_dir / "models",
        max_batch=settings.embed_max_batch,
        batch_window=settings.embed_batch_window_ms / 1000,
    )
