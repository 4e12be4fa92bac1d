"""Embeddings, files and models on the emulator, through the real openai SDK."""

from __future__ import annotations

import base64
import json
import math
import struct

import openai
import pytest
from spec import validate

from proxy.emulator.embeddings import embed


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


# --- embeddings ----------------------------------------------------------------------------------


def test_embeddings_float_are_deterministic_unit_vectors(emulator_openai) -> None:
    raw = emulator_openai.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["alpha", "beta", "alpha"], encoding_format="float"
    )
    body = json.loads(raw.text)
    validate(body, "CreateEmbeddingResponse")
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(len(v) == 1536 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(_norm(vectors[0]) - 1) < 1e-9
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_embeddings_base64_is_little_endian_float32(emulator_openai) -> None:
    raw = emulator_openai.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello", encoding_format="base64", dimensions=8
    )
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    expected = embed("hello", "text-embedding-3-small", 8)
    assert decoded == pytest.approx(expected, abs=1e-6)


def test_sdk_default_base64_decodes_to_the_float_vector(emulator, emulator_openai) -> None:
    """The SDK asks for base64 unless told otherwise and decodes it; the result matches ``float``."""
    sdk = emulator_openai.embeddings.create(model="text-embedding-3-large", input="same text", dimensions=256)
    assert emulator.requests()[-1]["body"]["encoding_format"] == "base64"
    floats = emulator_openai.embeddings.create(
        model="text-embedding-3-large", input="same text", dimensions=256, encoding_format="float"
    )
    assert len(sdk.data[0].embedding) == 256
    assert sdk.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_dimensions_truncate_and_renormalise_the_full_vector() -> None:
    full = embed("x", "text-embedding-3-large")
    short = embed("x", "text-embedding-3-large", 4)
    assert len(full) == 3072
    scale = _norm(full[:4])
    assert short == pytest.approx([value / scale for value in full[:4]])


def test_token_array_inputs(emulator_openai) -> None:
    result = emulator_openai.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert len(result.data) == 2 and result.usage.prompt_tokens == 5
    single = emulator_openai.embeddings.create(model="text-embedding-3-small", input=[1, 2, 3], encoding_format="float")
    assert single.data[0].embedding == result.data[0].embedding


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"model": "text-embedding-3-small", "input": ""}, "input[0]"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 1537}, "dimensions"),
        ({"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}, "dimensions"),
        ({"model": "text-embedding-3-small"}, "input"),
    ],
)
def test_invalid_embedding_requests(emulator_openai, params: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.post("/embeddings", body=params, cast_to=object)
    assert info.value.body["param"] == param


# --- files ---------------------------------------------------------------------------------------


def test_file_upload_list_content_delete(emulator_openai) -> None:
    files = emulator_openai.files
    payload = b"line one\r\n--not-a-boundary\r\n\x00\xff binary tail"
    raw = files.with_raw_response.create(file=("notes.bin", payload), purpose="assistants")
    created = json.loads(raw.text)
    validate(created, "OpenAIFile")
    assert (created["filename"], created["bytes"], created["purpose"]) == ("notes.bin", len(payload), "assistants")

    other = files.create(file=("data.jsonl", b"{}\n"), purpose="batch")
    listed = json.loads(files.with_raw_response.list().text)
    validate(listed, "ListFilesResponse")
    assert [f["id"] for f in listed["data"]] == [other.id, created["id"]]  # default order: desc
    assert [f.id for f in files.list(purpose="batch")] == [other.id]

    assert files.retrieve(created["id"]).filename == "notes.bin"
    assert files.content(created["id"]).read() == payload

    deleted = json.loads(files.with_raw_response.delete(created["id"]).text)
    validate(deleted, "DeleteFileResponse")
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        files.retrieve(created["id"])
    with pytest.raises(openai.NotFoundError):
        files.content(created["id"])


def test_file_upload_requires_a_valid_purpose(emulator_openai) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.files.create(file=("a.txt", b"x"), purpose="nonsense")
    assert info.value.body["param"] == "purpose"


# --- models --------------------------------------------------------------------------------------


def test_models_list_and_retrieve(emulator_openai) -> None:
    listed = json.loads(emulator_openai.models.with_raw_response.list().text)
    validate(listed, "ListModelsResponse")
    ids = [model["id"] for model in listed["data"]]
    assert {"gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini", "text-embedding-3-small"} <= set(ids)
    model = json.loads(emulator_openai.models.with_raw_response.retrieve("gpt-5-mini").text)
    validate(model, "Model")
    assert model["id"] == "gpt-5-mini"


def test_unknown_model_is_404_model_not_found(emulator_openai) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        emulator_openai.models.retrieve("gpt-0")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"
