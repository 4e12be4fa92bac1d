"""An optional cross-encoder rerank of recall's first candidates (fastembed ``TextCrossEncoder``).

Off unless ``MEMPROXY_RERANK_MODEL_PATH`` names a directory holding a cross-encoder's ONNX export
(``MEMPROXY_RERANK_MODEL`` names which one, for fastembed's registry: tokenizer and file layout). The
model reads the query and each candidate together, which a bi-encoder cannot, at the cost of one model
run per candidate: it runs on its own thread, never on the event loop, on the first
``MEMPROXY_RERANK_CANDIDATES`` of the fused list only.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.errors import MemproxyError

if TYPE_CHECKING:
    from proxy.config import Settings

SETTING = "MEMPROXY_RERANK_MODEL_PATH"


class RerankError(MemproxyError, RuntimeError):
    """The configured cross-encoder cannot be loaded."""


def _check_dir(path: Path) -> None:
    """Refuse a directory fastembed would fail on, naming the setting."""
    if not path.is_dir():
        raise RerankError(f"{SETTING}={path} is not a directory (unset it to recall without a rerank stage)")
    missing = [
        what
        for what, found in (
            ("an ONNX model", any(path.rglob("*.onnx"))),
            ("tokenizer.json", (path / "tokenizer.json").is_file()),
        )
        if not found
    ]
    if missing:
        raise RerankError(
            f"{SETTING}={path} holds no cross-encoder: {' and '.join(missing)} missing "
            "(the directory of a fastembed cross-encoder's ONNX export, e.g. Xenova/ms-marco-MiniLM-L-6-v2)"
        )


class Reranker:
    """A fastembed cross-encoder loaded from a local directory, run on a dedicated thread."""

    def __init__(self, model_name: str, path: Path, *, threads: int | None = 1) -> None:
        from fastembed.rerank.cross_encoder import TextCrossEncoder

        path = path.expanduser()
        _check_dir(path)
        try:
            self._model: Any = TextCrossEncoder(model_name, threads=threads, specific_model_path=str(path))
        except Exception as exc:
            raise RerankError(f"{SETTING}={path}: cannot load cross-encoder {model_name!r}: {exc}") from exc
        self.name = model_name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-rerank")

    def _scores(self, query: str, texts: list[str]) -> list[float]:
        return [float(s) for s in self._model.rerank(query, texts)]

    async def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        """The cross-encoder's relevance of each text to ``query``, in order (higher is more relevant)."""
        if not texts:
            return []
        run = functools.partial(self._scores, query, list(texts))
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)


def make_reranker(settings: Settings) -> Reranker | None:
    """The reranker ``settings`` describe, or None when ``rerank_model_path`` is unset."""
    if settings.rerank_model_path is None:
        return None
    return Reranker(settings.rerank_model, settings.rerank_model_path, threads=settings.embed_threads)
