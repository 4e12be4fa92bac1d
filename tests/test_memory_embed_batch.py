"""The local embedder's int8 copy, its micro-batching of queries, and its errors when the model is missing."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import numpy as np
import pytest
from conftest import owner, settings_without_model

from proxy.config import Settings
from proxy.memory.embed import EmbeddingError, LocalEmbedder
from proxy.memory.sealing import Sealer
from proxy.memory.service import MemoryService
from proxy.memory.store_edge import EdgeStore

FACTS = [
    "User lives in Berlin",
    "User works as a nurse on night shifts",
    "User's daughter is called Mia and plays the cello",
    "User is learning Portuguese for a move to Lisbon",
    "User prefers window seats on long flights",
    "User is allergic to penicillin",
    "User keeps bees on a rooftop",
    "User runs Kubernetes clusters at work",
    "User's favourite food is ramen",
    "User drives an electric car",
]
QUESTIONS = [
    "Where do I live?",
    "What is my job?",
    "What instrument does my daughter play?",
    "Which language am I learning?",
    "Where do I like to sit on a plane?",
    "Which medicine must I avoid?",
    "What do I keep on the roof?",
    "What do I run at work?",
    "What should I cook tonight?",
    "How do I get around town?",
    "Tell me about my family",
    "Any travel plans?",
]


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def int8_embedder(memory_model_dir, int8_cache):
    embedder = LocalEmbedder(model_path=memory_model_dir, cache_size=0, quantize=True, cache_dir=int8_cache)
    yield embedder
    embedder.close()


async def test_the_int8_copy_is_made_once_and_embeds_like_the_float_model(
    int8_embedder, int8_cache, local_embedder, memory_model_dir
):
    assert int8_embedder.quantized and int8_embedder.variant == "int8"
    [copy] = list(int8_cache.iterdir())
    model = copy / "model.onnx"
    assert model.stat().st_size < (memory_model_dir / "model.onnx").stat().st_size * 0.7  # MatMul weights int8
    made = model.stat().st_mtime_ns
    again = LocalEmbedder(model_path=memory_model_dir, cache_size=0, quantize=True, cache_dir=int8_cache)
    again.close()
    assert again.quantized and model.stat().st_mtime_ns == made and len(list(int8_cache.iterdir())) == 1
    q8 = np.array(await int8_embedder.embed_documents(FACTS))
    f32 = np.array(await local_embedder.embed_documents(FACTS))
    assert (q8 * f32).sum(axis=1).min() > 0.97  # measured ~0.99
    # it still ranks: each question's nearest fact is the same with both models
    for question in QUESTIONS[:8]:
        q, f = await int8_embedder.embed_query(question), await local_embedder.embed_query(question)
        assert int(np.argmax(q8 @ np.array(q))) == int(np.argmax(f32 @ np.array(f)))


def test_without_a_place_for_the_copy_the_float_model_is_used(memory_model_dir, tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="proxy.memory.embed"):
        embedder = LocalEmbedder(model_path=memory_model_dir, quantize=True, cache_dir=blocker)
    embedder.close()
    assert not embedder.quantized and embedder.dim == 384
    assert "embedding with the float model" in caplog.text


def test_a_model_directory_missing_files_names_the_setting_and_the_files(memory_model_dir, tmp_path):
    with pytest.raises(EmbeddingError) as empty:
        LocalEmbedder(model_path=tmp_path)
    message = str(empty.value)
    assert "no ONNX model" in message and "MEMPROXY_EMBED_MODEL_PATH" in message
    assert all(name in message for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json"))
    (tmp_path / "model.onnx").symlink_to(memory_model_dir / "model.onnx")
    shutil.copyfile(memory_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(EmbeddingError, match=r"incomplete model directory.*tokenizer_config.json missing"):
        LocalEmbedder(model_path=tmp_path)


def test_readyz_says_which_setting_and_files_the_model_needs(tmp_path):
    from starlette.testclient import TestClient

    from proxy.app import create_app

    with TestClient(create_app(settings_without_model(tmp_path))) as client:
        for _ in range(200):  # the model is tried in the background
            reason = client.get("/readyz").json()["checks"]["memory"]
            if reason != "starting":
                break
            time.sleep(0.01)
    assert "MEMPROXY_EMBED_MODEL_PATH" in reason and "tokenizer.json" in reason, reason


async def test_concurrent_recalls_are_batched_and_find_what_sequential_ones_find(int8_embedder, tmp_path):
    settings = Settings(data_dir=tmp_path, memory_access_flush_seconds=3600)
    store = EdgeStore(tmp_path / "memories", dim=int8_embedder.dim, sealer=Sealer.ephemeral())
    async with MemoryService(store, int8_embedder, settings, owns_store=True) as service:
        mine = service.of(owner("t", "alice"))
        for fact in FACTS:
            await mine.remember(fact)

        def ids(found) -> list[tuple[str, float, float]]:
            """What was found, with its cosine and confidence, in id order: two memories tied in the fused
            (RRF) ranking may come back in either order, batched or not."""
            return sorted((s.memory.id, round(s.semantic, 5), round(s.confidence, 5)) for s in found)

        sequential = [ids(await mine.recall(q)) for q in QUESTIONS]
        batches = int8_embedder.batches
        concurrent = [ids(found) for found in await asyncio.gather(*(mine.recall(q) for q in QUESTIONS))]
    assert concurrent == sequential and any(sequential)
    assert int8_embedder.batches - batches < len(QUESTIONS), "the queries that waited went together"


class FailingBatches:
    """fastembed's model, failing every batch that holds ``poison`` (a fault of the model library)."""

    def __init__(self, model, poison: str) -> None:
        self.model, self.poison = model, poison

    def __getattr__(self, name):
        return getattr(self.model, name)

    def query_embed(self, texts, **kwargs):
        if self.poison in texts:
            raise RuntimeError("ONNX run failed")
        return self.model.query_embed(texts, **kwargs)


async def test_a_failing_batch_fails_only_the_queries_in_it(memory_model_dir):
    embedder = LocalEmbedder(model_path=memory_model_dir, cache_size=0)
    embedder._model = FailingBatches(embedder._model, "poison")
    try:
        first = asyncio.ensure_future(embedder.embed_query(QUESTIONS[0]))  # finds the model idle: a batch alone
        await asyncio.sleep(0)
        second = [asyncio.ensure_future(embedder.embed_query(q)) for q in ("poison", *QUESTIONS[1:4])]
        results = await asyncio.gather(first, *second, return_exceptions=True)
        after = await embedder.embed_query(QUESTIONS[5])
    finally:
        embedder.close()
    assert len(results[0]) == 384
    assert all(isinstance(r, RuntimeError) for r in results[1:]), results
    assert len(after) == 384 and embedder.batches == 3


async def test_memories_of_one_turn_embed_in_one_call_and_store_the_same_vectors(local_embedder, tmp_path):
    settings = Settings(data_dir=tmp_path, memory_access_flush_seconds=3600)
    store = EdgeStore(tmp_path / "memories", dim=local_embedder.dim, sealer=Sealer.ephemeral())
    async with MemoryService(store, local_embedder, settings, owns_store=True) as service:
        batched, alone = service.of(owner("t", "batched")), service.of(owner("t", "alone"))
        calls = local_embedder.document_calls
        vectors = await service.embed_texts(["  User keeps bees  ", FACTS[1], FACTS[1], "   "])
        assert local_embedder.document_calls == calls + 1 and sorted(vectors) == sorted(["User keeps bees", FACTS[1]])
        first, _ = await batched.remember("  User keeps bees  ", vectors=vectors)
        await batched.update(first.id, FACTS[1], vectors=vectors)
        assert local_embedder.document_calls == calls + 1, "remember and update took the vectors given"
        await alone.remember(FACTS[1])
        assert local_embedder.document_calls == calls + 2
        for who in (batched, alone):  # the vector stored is the text's own
            [found] = await who.recall(FACTS[1])
            assert found.memory.text == FACTS[1] and found.semantic == pytest.approx(1.0, abs=1e-4)
