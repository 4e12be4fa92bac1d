"""Embedders: the real local model (offline directory) and the upstream one against a mock server."""

from __future__ import annotations

import logging

import httpx2
import numpy as np
import pytest

from proxy.config import Settings
from proxy.memory.embed import EmbeddingError, LocalEmbedder, UpstreamEmbedder, make_embedder
from proxy.memory.scoring import cosine


async def test_local_model_loads_offline_and_embeds(local_embedder):
    assert local_embedder.dim == 384
    q = await local_embedder.embed_query("I am vegan")
    docs = await local_embedder.embed_documents(["I don't eat any animal products", "The train leaves at nine"])
    assert len(q) == 384 and len(docs) == 2 and all(len(d) == 384 for d in docs)
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-3)
    # a paraphrase is closer than an unrelated sentence
    assert cosine(q, docs[0]) > cosine(q, docs[1]) + 0.3
    # the same text embeds the same as a query and as a document (symmetric model)
    (same,) = await local_embedder.embed_documents(["I am vegan"])
    assert cosine(q, same) == pytest.approx(1.0, abs=1e-5)
    assert await local_embedder.embed_documents([]) == []


async def test_local_query_cache_serves_repeats(local_embedder):
    hits, misses = local_embedder.cache_hits, local_embedder.cache_misses
    first = await local_embedder.embed_query("where does the user live? (cache test)")
    first[0] = 123.0  # callers may mutate their copy without poisoning the cache
    second = await local_embedder.embed_query("where does the user live? (cache test)")
    assert (local_embedder.cache_hits - hits, local_embedder.cache_misses - misses) == (1, 1)
    assert second[0] != 123.0


def test_local_embedder_lru_evicts_oldest(memory_model_dir):
    import asyncio

    small = LocalEmbedder(model_path=memory_model_dir, cache_size=2)

    async def run():
        for text in ("one", "two", "three", "one"):
            await small.embed_query(text)

    try:
        asyncio.run(run())
    finally:
        small.close()
    assert small.cache_misses == 4  # "one" was evicted by "three"
    assert list(small._cache) == ["three", "one"]


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddingError, match="no ONNX model"):
        LocalEmbedder(model_path=tmp_path)


def test_factory_builds_the_local_embedder_from_settings(memory_model_dir, tmp_path):
    settings = Settings(embedder="local", embed_model_path=memory_model_dir, embed_cache_size=7, data_dir=tmp_path)
    embedder = make_embedder(settings)
    try:
        assert isinstance(embedder, LocalEmbedder) and embedder.dim == 384 and embedder._cache_size == 7
        assert embedder.quantized and (tmp_path / "models").is_dir()  # int8 by default, its copy in the data dir
    finally:
        embedder.close()


# --- upstream ---------------------------------------------------------------------------------------


def _upstream(emulator, **kw) -> tuple[UpstreamEmbedder, httpx2.AsyncClient]:
    client = httpx2.AsyncClient()
    return UpstreamEmbedder(client, base_url=emulator.base_url, **kw), client


async def test_upstream_embedder_posts_with_the_per_call_key(emulator, caplog):
    embedder, client = _upstream(emulator, model="text-embedding-3-small", dim=8, send_dimensions=True, batch_size=2)
    caplog.set_level(logging.DEBUG)
    async with client:
        vectors = await embedder.embed_documents(["a", "b", "c"], api_key="sk-secret-1")
        query = await embedder.embed_query("a", api_key="sk-secret-2")
    seen = emulator.requests("/v1/embeddings")
    assert [len(v) for v in vectors] == [8, 8, 8] and vectors[0] != vectors[1]
    assert query == vectors[0]  # the emulator's vectors are a pure function of the text
    assert [entry["body"]["input"] for entry in seen] == [["a", "b"], ["c"], ["a"]]
    assert [entry["headers"]["authorization"] for entry in seen] == ["Bearer sk-secret-1"] * 2 + ["Bearer sk-secret-2"]
    assert seen[0]["body"] == {
        "model": "text-embedding-3-small",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 8,
    }
    assert "sk-secret" not in repr(vars(embedder)) and "sk-secret" not in caplog.text


async def test_upstream_errors_never_carry_the_key(emulator):
    emulator.fault(path="/embeddings", status=401, message="Incorrect API key provided: sk-secret-9")
    embedder, client = _upstream(emulator)
    async with client:
        with pytest.raises(EmbeddingError, match="HTTP 401") as err:
            await embedder.embed_query("x", api_key="sk-secret-9")
    assert "sk-secret" not in str(err.value) and err.value.__cause__ is None


async def test_upstream_wrong_size_and_malformed_responses_are_errors(emulator):
    embedder, client = _upstream(emulator, model="text-embedding-3-small", dim=16)
    async with client:
        with pytest.raises(EmbeddingError, match="size 1536, expected 16"):
            await embedder.embed_query("x")
        emulator.fault(path="/embeddings", status=200, body={"nope": 1})
        with pytest.raises(EmbeddingError, match="malformed"):
            await embedder.embed_query("x")


async def test_upstream_transport_failure_is_an_embedding_error(emulator):
    emulator.fault(path="/embeddings", drop_after=5)
    embedder, client = _upstream(emulator)
    async with client:
        with pytest.raises(EmbeddingError, match="failed"):
            await embedder.embed_query("x")


async def test_upstream_sends_dimensions_when_configured(emulator):
    async with httpx2.AsyncClient() as client:
        settings = Settings(embedder="upstream", upstream_url=emulator.base_url, embed_dim=256)
        embedder = make_embedder(settings, client)
        assert embedder.dim == 256
        assert len(await embedder.embed_query("x", api_key="k")) == 256
    body = emulator.requests("/v1/embeddings")[-1]["body"]
    assert body["dimensions"] == 256 and body["model"] == "text-embedding-3-small"


def test_upstream_factory_needs_a_client_and_a_known_size():
    with pytest.raises(EmbeddingError, match="httpx"):
        make_embedder(Settings(embedder="upstream"))
    with pytest.raises(EmbeddingError, match="MEMPROXY_EMBED_DIM"):
        UpstreamEmbedder(httpx2.AsyncClient(), base_url="http://x", model="some-unknown-model")


# --- bounded work: texts are cut by characters before they are tokenized ---------------------------

PROSE = (
    "The user keeps bees on a rooftop in Lyon, sells the honey at the Saturday market, and is "
    "learning Japanese before a trip to Osaka next spring. "
)


async def test_local_embedder_cuts_long_texts_before_tokenizing(local_embedder):
    import time

    assert local_embedder.max_chars == 512 * 16  # MiniLM reads 512 tokens; 16 characters kept per token
    huge = PROSE * 80_000  # 11 MB
    began = time.perf_counter()
    query = await local_embedder.embed_query(huge)
    (document,) = await local_embedder.embed_documents([huge])
    assert time.perf_counter() - began < 5  # the whole text took ~10 s and gigabytes
    assert query == await local_embedder.embed_query(huge[: local_embedder.max_chars])
    assert all(len(key) <= local_embedder.max_chars for key in local_embedder._cache)  # no 11 MB cache key
    assert cosine(query, document) == pytest.approx(1.0, abs=1e-5)


async def test_the_cut_is_generous_the_model_sees_what_it_would_have_seen(local_embedder):
    """Cut at 8,192 characters or not, the vector is the same: the model's own 512 tokens end well before."""
    text = PROSE * 100  # 14,400 characters, far more than 512 tokens
    assert len(text) > local_embedder.max_chars
    uncut = next(iter(local_embedder._model.query_embed([text])))
    assert cosine(await local_embedder.embed_query(text), [float(x) for x in uncut]) == pytest.approx(1.0, abs=1e-6)


async def test_upstream_embedder_cuts_long_texts(emulator):
    from proxy.memory.embed import UPSTREAM_MAX_CHARS

    embedder, client = _upstream(emulator, dim=8, send_dimensions=True)
    async with client:
        await embedder.embed_query("q" * (UPSTREAM_MAX_CHARS + 10_000))
        await embedder.embed_documents(["d" * (UPSTREAM_MAX_CHARS * 3), "short"])
    sent = [entry["body"]["input"] for entry in emulator.requests("/v1/embeddings")]
    assert sent == [["q" * UPSTREAM_MAX_CHARS], ["d" * UPSTREAM_MAX_CHARS, "short"]]


def test_the_recall_query_keeps_its_end_within_chars_then_tokens():
    from proxy.memory.tokens import QUERY_MAX_CHARS, QUERY_MAX_TOKENS, cap_query, count_tokens

    short = "Where do I keep my bees?"
    assert cap_query(short) == short
    long = "lorem ipsum dolor sit amet " * 500_000 + short  # 13 MB, the question last
    capped = cap_query(long)
    assert capped.endswith(short) and len(capped) <= QUERY_MAX_CHARS
    assert count_tokens(capped) <= QUERY_MAX_TOKENS
    dense = "蜂蜜" * 5_000 + short  # about a token per character: the token cap decides
    capped = cap_query(dense)
    assert capped.endswith(short) and count_tokens(capped) <= QUERY_MAX_TOKENS
    assert "\ufffd" not in capped
