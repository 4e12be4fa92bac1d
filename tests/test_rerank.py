"""The optional cross-encoder rerank stage: refused with the setting's name when misconfigured, and (given a
model directory in ``MEMPROXY_TEST_RERANK_MODEL_PATH``) recall's first candidates in the model's order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import owner
from pydantic import ValidationError

from proxy.config import Settings
from proxy.memory.rerank import Reranker, RerankError, make_reranker
from proxy.memory.sealing import Sealer
from proxy.memory.service import MemoryService
from proxy.memory.store_edge import EdgeStore

MODEL = os.environ.get("MEMPROXY_TEST_RERANK_MODEL_PATH")
needs_model = pytest.mark.skipif(
    not MODEL,
    reason="no cross-encoder here: set MEMPROXY_TEST_RERANK_MODEL_PATH to the directory of a fastembed "
    "cross-encoder's ONNX export (e.g. Xenova/ms-marco-MiniLM-L-6-v2) to run it",
)


def test_off_by_default(tmp_path):
    assert make_reranker(Settings(data_dir=tmp_path)) is None


def test_a_missing_directory_is_refused_at_start_naming_the_setting(tmp_path):
    with pytest.raises(ValidationError, match="MEMPROXY_RERANK_MODEL_PATH"):
        Settings(data_dir=tmp_path, rerank_model_path=tmp_path / "no-such-model")


def test_a_directory_without_a_model_is_refused_naming_the_setting(tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(RerankError, match=r"MEMPROXY_RERANK_MODEL_PATH=.*model.*an ONNX model missing"):
        make_reranker(Settings(data_dir=tmp_path, rerank_model_path=empty))


@needs_model
async def test_recall_puts_its_first_candidates_in_the_cross_encoders_order(tmp_path, local_embedder):
    assert MODEL is not None
    settings = Settings(data_dir=tmp_path, rerank_model_path=Path(MODEL), rerank_candidates=4)
    store = EdgeStore(tmp_path / "memories", dim=local_embedder.dim, sealer=Sealer.ephemeral())
    reranker = make_reranker(settings)
    assert isinstance(reranker, Reranker)
    service = MemoryService(store, local_embedder, settings, owns_store=True, reranker=reranker)
    await service.start()
    try:
        me = service.of(owner("tenant-r", "rita"))
        for text in (
            "User's flight to Oslo leaves on Friday",
            "User flew to Oslo last year and hated the food",
            "User is afraid of flying",
            "User lives in Bergen",
            "User works as a nurse",
        ):
            await me.remember(text)
        question = "Should I take the train or fly to Oslo?"
        got = await me.recall(question, top_k=5, min_similarity=0.0, min_confidence=0.0)
        head = [s.memory.text for s in got[:4]]
        scores = await reranker.scores(question, head)
        assert scores == sorted(scores, reverse=True)
        assert [s.rank for s in got] == list(range(len(got)))
    finally:
        await service.aclose()
