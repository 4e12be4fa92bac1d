"""Every input the memory API refuses is a 4xx with OpenAI's error envelope, never a 500.

Plain HTTP against a real proxy (the SDK-like client would refuse some of these before sending).
"""

from __future__ import annotations

import math

import httpx
import pytest

from proxy import api
from proxy.client import Memory

KEY = {"authorization": "Bearer sk-inputs"}


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy()


@pytest.fixture
def base(proxy, request) -> str:
    return f"{proxy.url}/memory/v1/users/inputs-{request.node.name[:80]}"


@pytest.fixture
def memory_id(proxy, base) -> str:
    response = httpx.post(base + "/memories", json={"text": "Keeps bees on a rooftop"}, headers=KEY)
    assert response.status_code == 201
    return response.json()["memory"]["id"]


def refused(response: httpx.Response, status: int = 400, param: str | None = None) -> dict:
    """The OpenAI envelope of a refusal, checked."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["message"] and len(response.content) < 2000  # the input is never echoed at length
    if param is not None:
        assert error["param"] == param
    return error


def post_raw(url: str, raw: bytes) -> httpx.Response:
    return httpx.post(url, content=raw, headers={**KEY, "content-type": "application/json"}, timeout=30)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"kind": "BAD KIND"}, "kind"),
        ({"kind": "k" * 100_000}, "kind"),
        ({"kind": 7}, "kind"),
        ({"ttl_seconds": 1e20}, "ttl_seconds"),
        ({"ttl_seconds": 1e-9}, "ttl_seconds"),
        ({"ttl_seconds": 0.0009}, "ttl_seconds"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": -5}, "ttl_seconds"),
        ({"ttl_seconds": api.MAX_TTL_SECONDS + 1}, "ttl_seconds"),
        ({"text": "   \n\t "}, "text"),
        ({"text": ""}, "text"),
        ({"text": "x" * 2001}, "text"),
        ({"metadata": {"blob": "b" * (api.MAX_METADATA_BYTES + 1)}}, "metadata"),
        ({"metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}}, "metadata"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"assistant_id": "../files/file-1"}, "assistant_id"),
        ({"assistant_id": "a" * 200}, "assistant_id"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_remember_refuses_each_invalid_field(base, fields, param) -> None:
    refused(httpx.post(base + "/memories", json={"text": "Lives in Lyon", **fields}, headers=KEY), param=param)


@pytest.mark.parametrize("literal", [b"1e400", b"Infinity", b"-Infinity", b"NaN"])
def test_remember_refuses_an_infinite_ttl_however_spelled(base, literal) -> None:
    refused(post_raw(base + "/memories", b'{"text":"Lives in Lyon","ttl_seconds":' + literal + b"}"))


def test_metadata_nested_900_deep_is_a_400(base) -> None:
    deep = b'{"text":"x","metadata":' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}"
    refused(post_raw(base + "/memories", deep))
    deep = b'{"text":"x","metadata":' + b'{"a":' * 50 + b"1" + b"}" * 50 + b"}"
    refused(post_raw(base + "/memories", deep), param="metadata")


def test_metadata_within_the_bounds_is_kept(base) -> None:
    metadata = {"a": {"b": {"c": {"d": {"e": {"f": {"g": [1, "x"]}}}}}}, "note": "n" * 10_000}
    response = httpx.post(base + "/memories", json={"text": "Lives in Lyon", "metadata": metadata}, headers=KEY)
    assert response.status_code == 201 and response.json()["memory"]["metadata"] == metadata


def test_ttl_at_its_bounds_is_accepted(base) -> None:
    for text, ttl in (("Is in Osaka this week", api.MIN_TTL_SECONDS), ("Rents a flat", api.MAX_TTL_SECONDS)):
        response = httpx.post(base + "/memories", json={"text": text, "ttl_seconds": ttl}, headers=KEY)
        assert response.status_code == 201 and response.json()["memory"]["expires_at"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": "x" * 2001}, "text"),
        ({"text": "  "}, "text"),
        ({"text": "Keeps wasps", "reason": "r" * (api.MAX_REASON_CHARS + 1)}, "reason"),
        ({"text": "Keeps wasps", "reason": "r" * 5_000_000}, None),  # over the body limit: 413, below
    ],
    ids=["text-too-long", "text-blank", "reason-too-long", "reason-5MB"],
)
def test_patch_refuses_invalid_text_and_reason(base, memory_id, body, param) -> None:
    response = httpx.patch(f"{base}/memories/{memory_id}", json=body, headers=KEY, timeout=30)
    refused(response, 413 if param is None else 400, param)
    assert httpx.get(f"{base}/memories/{memory_id}", headers=KEY).json()["text"] == "Keeps bees on a rooftop"


def test_delete_refuses_a_reason_over_the_limit(base, memory_id) -> None:
    response = httpx.delete(f"{base}/memories/{memory_id}", params={"reason": "r" * 5000}, headers=KEY)
    refused(response, param="reason")
    assert httpx.get(f"{base}/memories/{memory_id}", headers=KEY).json()["deleted_at"] is None


@pytest.mark.parametrize(
    "cursor",
    ["garbage!!", "c" * 60_000, "1" * 5000, "00000000-0000-0000-0000-00000000000g", " "],
    ids=["garbage", "60KB", "digits", "almost-uuid", "blank"],
)
def test_list_refuses_a_cursor_it_did_not_hand_out(base, memory_id, cursor) -> None:
    error = refused(httpx.get(base + "/memories", params={"cursor": cursor}, headers=KEY), param="cursor")
    assert error["code"] == "invalid_cursor"


@pytest.mark.parametrize("limit", ["0", "-1", "201", "abc", "9" * 5000, "1.5", "²"])
def test_list_refuses_a_limit_out_of_range(base, limit) -> None:
    refused(httpx.get(base + "/memories", params={"limit": limit}, headers=KEY), param="limit")


def test_list_pages_with_its_own_cursor(proxy, base) -> None:
    subject = base.rsplit("/", 1)[-1]
    with Memory(proxy.url, api_key="sk-inputs") as memory:
        user = memory.user(subject)
        for text in ("Owns a red bicycle", "Studies Japanese", "Has two cats"):
            user.remember(text)
        first = user.list(limit=2)
        rest = user.list(limit=2, cursor=first["next_cursor"])
    assert len(first["data"]) == 2 and len(rest["data"]) == 1 and not rest["has_more"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "bees", "top_k": 0}, "top_k"),
        ({"query": "bees", "top_k": 101}, "top_k"),
        ({"query": "bees", "min_confidence": 2}, "min_confidence"),
        ({"query": "bees", "assistant_id": "asst 1"}, "assistant_id"),
        ({"query": ""}, "query"),
    ],
    ids=["top_k-0", "top_k-101", "confidence-2", "assistant-id", "empty"],
)
@pytest.mark.parametrize("route", ["/recall", "/context"])
def test_recall_and_context_refuse_invalid_fields(base, body, param, route) -> None:
    refused(httpx.post(base + route, json=body, headers=KEY), param=param)


def test_recall_with_a_huge_query_is_answered_quickly(base, memory_id) -> None:
    import time

    began = time.perf_counter()
    response = httpx.post(base + "/recall", json={"query": "noise " * 500_000 + "bees?"}, headers=KEY, timeout=30)
    assert response.status_code == 200 and time.perf_counter() - began < 5
    assert [item["memory"]["id"] for item in response.json()["data"]] == [memory_id]


def test_migrate_refuses_too_many_threads(base) -> None:
    threads = [f"thread_{i}" for i in range(api.MAX_MIGRATE_THREADS + 1)]
    refused(httpx.post(base + "/migrate", json={"threads": threads}, headers=KEY), param="threads")


@pytest.mark.parametrize(
    "after", ["garbage!!", "a" * 60_000, "audit_" + "0" * 32], ids=["garbage", "60KB", "unknown-entry"]
)
def test_audit_refuses_an_after_that_names_no_entry(proxy, after) -> None:
    error = refused(httpx.get(proxy.url + "/memory/v1/audit", params={"after": after}, headers=KEY), param="after")
    assert error["code"] == "invalid_cursor"


@pytest.mark.parametrize("head", ["1" * 5000 + ":" + "a" * 16, "x" * 60_000, "nonsense"])
def test_audit_verify_refuses_a_malformed_head(proxy, head) -> None:
    response = httpx.get(proxy.url + "/memory/v1/audit/verify", params={"head": head}, headers=KEY)
    refused(response, param="head")


def test_a_long_unknown_memory_id_is_a_404_that_does_not_echo_it(base) -> None:
    response = httpx.get(f"{base}/memories/{'m' * 60_000}", headers=KEY)
    refused(response, 404)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b""],
    ids=["malformed", "array", "string", "utf16", "empty"],
)
def test_a_body_that_is_not_a_json_object_is_a_400(base, raw) -> None:
    refused(post_raw(base + "/memories", raw))


def test_bounds_are_what_the_readme_documents() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Memory API") : readme.index("## GDPR")]
    for bound in (
        f"{api.MAX_METADATA_BYTES // 1024} KiB",
        f"{api.MAX_METADATA_DEPTH} levels",
        f"{api.MAX_REASON_CHARS:,} characters",
        "1 millisecond to 100 years",
        f"{api.MAX_LIST_LIMIT}",
        f"{api.MAX_MIGRATE_THREADS:,}",
    ):
        assert bound in section, bound
    assert math.isclose(api.MAX_TTL_SECONDS / 86400 / 365, 100)
