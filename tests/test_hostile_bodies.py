"""Bodies the hooks cannot handle (too large, nested too deep, too many values) go upstream untouched.

Real proxies on free ports, the emulator as upstream, plain HTTP: the bytes the upstream received
are compared with the bytes sent, and the memory headers say why memory stayed out.
"""

from __future__ import annotations

import json

import httpx
import pytest

from proxy import jsonbody
from proxy.client import Memory

FACT = "Their company is Acme Corp and they run Kubernetes in production"
DEEP = b'{"model":"gpt-4o-mini","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LIMIT = 512 * 1024


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy(memory_max_body_bytes=LIMIT, memory_recall_deadline_ms=5000)  # a busy CI machine


@pytest.fixture(scope="module")
def bridge(make_proxy):
    return make_proxy(assistants="bridge", memory_max_body_bytes=LIMIT)


@pytest.fixture
def user(proxy, request) -> str:
    """A subject who has one memory, taught through the memory API."""
    name = f"user-{request.node.name}"
    with Memory(proxy.url, api_key="sk-app-1") as memory:
        memory.user(name).remember(FACT)
    return name


def post(proxy, path: str, content: bytes, **headers: str) -> httpx.Response:
    headers = {"authorization": "Bearer sk-app-1", "content-type": "application/json", **headers}
    return httpx.post(proxy.url + path, content=content, headers=headers, timeout=30)


def received(emulator, path: str):
    """What the upstream received on ``path``, last request first: its body as the emulator records it."""
    return emulator.requests(path)[-1]["body"]


# --- the measure itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 101 + b"]" * 101, "body-too-deep"),
        (b'{"a":' * 101 + b"1" + b"}" * 101, "body-too-deep"),
        (b"[" * 1_000_000 + b"]" * 1_000_000, "body-too-deep"),
        (b"[" + b"{}," * 200_000 + b"{}]", "body-too-complex"),
        (b"[" + b'"ab",' * 200_000 + b'""]', "body-too-complex"),
        (b"[" + b"1," * 200_000 + b"1]", "body-too-complex"),
    ],
    ids=["array-101", "object-101", "array-1M", "dicts", "strings", "numbers"],
)
def test_bodies_beyond_the_bounds_are_refused_before_parsing(raw, reason) -> None:
    assert jsonbody.measure(raw) == reason
    with pytest.raises(jsonbody.Refused) as refused:
        jsonbody.loads(raw)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100 + b"]" * 100,
        json.dumps({"text": "[" * 10_000 + "{" * 10_000 + "," * 200_000}).encode(),  # brackets inside a string
        json.dumps({"text": '\\"[[[[' * 50_000}).encode(),  # escaped quotes do not end the string
        b"[" + b"1," * 99_990 + b"1]",
    ],
    ids=["depth-100", "brackets-in-string", "escaped-quotes", "values-100k"],
)
def test_bodies_within_the_bounds_parse_as_json_does(raw) -> None:
    assert jsonbody.measure(raw) is None
    assert jsonbody.loads(raw) == json.loads(raw)


def test_an_unterminated_string_is_measured_in_linear_time() -> None:
    import time

    raw = b"[" * 200 + b'"' + b'\\"' * 1_000_000  # quadratic for a pattern that must find the closing quote
    began = time.perf_counter()
    jsonbody.measure(raw)
    assert time.perf_counter() - began < 1.0
    with pytest.raises(ValueError):
        jsonbody.loads(raw)


def test_strict_parsing_refuses_nan_and_infinity() -> None:
    assert jsonbody.loads(b'{"x": Infinity}')["x"] == float("inf")
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ValueError):
            jsonbody.loads(b'{"x": ' + constant + b"}", strict=True)


# --- hooked routes: forwarded untouched --------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/responses", "/v1/threads/thread_abc/runs", "/v1/threads/runs"],
    ids=["chat", "responses", "run", "thread-and-run"],
)
def test_deep_json_is_forwarded_untouched_for_the_upstream_to_judge(proxy, emulator, user, path) -> None:
    response = post(proxy, path, DEEP, **{"x-memory-user": user})
    assert response.status_code == 400  # the upstream's verdict, relayed
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert received(emulator, path) == DEEP.decode()  # byte for byte (the recorder keeps it as text)
    assert response.headers["x-memory-status"] == "off"
    assert response.headers["x-memory-reason"] == "body-too-deep"
    assert proxy.app.state.runtime.counters["memory_off.body-too-deep"] >= 1


def test_too_many_values_are_forwarded_untouched(proxy, emulator, user) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": [0] * 120_000}
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) < LIMIT
    response = post(proxy, "/v1/chat/completions", raw, **{"x-memory-user": user})
    assert response.headers["x-memory-status"] == "off"
    assert response.headers["x-memory-reason"] == "body-too-complex"
    assert received(emulator, "/v1/chat")["metadata"] == body["metadata"]


def test_a_body_over_the_limit_is_forwarded_untouched_without_memory(proxy, emulator, user) -> None:
    question = "What do we run in production? " + "x" * LIMIT
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    raw = json.dumps(body).encode()
    response = post(proxy, "/v1/chat/completions", raw, **{"x-memory-user": user})
    assert response.status_code == 200
    assert response.headers["x-memory-status"] == "off"
    assert response.headers["x-memory-reason"] == "body-too-large"
    assert received(emulator, "/v1/chat") == body  # no block injected: the messages as sent
    assert proxy.app.state.runtime.counters["memory_off.body-too-large"] >= 1


def test_a_chunked_body_over_the_limit_is_forwarded_untouched_too(proxy, emulator, user) -> None:
    body = {"model": "gpt-4o-mini", "input": "What do we run? " + "y" * LIMIT, "safety_identifier": user}
    raw = json.dumps(body).encode()

    def chunks():  # no Content-Length: the hook has to read it to know
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    headers = {"authorization": "Bearer sk-app-1", "content-type": "application/json"}
    response = httpx.post(proxy.url + "/v1/responses", content=chunks(), headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-memory-reason"] == "body-too-large"
    assert received(emulator, "/v1/responses") == body


def test_a_body_under_the_limit_still_gets_memory(proxy, emulator, user) -> None:
    schema = {"type": "string"}
    for _ in range(30):  # a structured-output schema nested deeper than any real one
        schema = {"type": "object", "properties": {"inner": schema}}
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What do we run in production?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}},
    }
    response = post(proxy, "/v1/chat/completions", json.dumps(body).encode(), **{"x-memory-user": user})
    assert response.headers["x-memory-status"] == "ok"
    assert FACT in received(emulator, "/v1/chat")["messages"][0]["content"]


def test_a_long_message_under_the_limit_is_recalled_on_its_end_in_bounded_time(proxy, emulator, user) -> None:
    import time

    question = "lorem ipsum dolor " * 25_000 + "What do we run in production?"  # 450 KB, one message
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    began = time.perf_counter()
    response = post(proxy, "/v1/chat/completions", json.dumps(body).encode(), **{"x-memory-user": user})
    assert time.perf_counter() - began < 3  # the query is capped: embedding and BM25 read 512 tokens
    assert response.headers["x-memory-status"] == "ok"
    assert FACT in received(emulator, "/v1/chat")["messages"][0]["content"]


def test_memory_off_by_header_says_no_reason_even_for_a_large_body(proxy, emulator, user) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "z" * LIMIT}]}
    response = post(proxy, "/v1/chat/completions", json.dumps(body).encode(), **{"x-memory": "off"})
    assert response.headers["x-memory-status"] == "off" and "x-memory-reason" not in response.headers


# --- the bridge and the memory API: answered, never a 500 ----------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/threads", "/v1/threads/runs", "/v1/assistants"], ids=["thread", "thread-and-run", "assistant"]
)
def test_the_bridge_answers_openais_400_for_deep_json(bridge, path) -> None:
    response = post(bridge, path, b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("We could not parse the JSON body of your request.")


@pytest.mark.parametrize(
    ("path", "method"),
    [("/memories", "POST"), ("/recall", "POST"), ("/context", "POST"), ("/migrate", "POST")],
    ids=["remember", "recall", "context", "migrate"],
)
def test_the_memory_api_answers_400_for_deep_json(proxy, path, method) -> None:
    deep = b'{"text":"x","metadata":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    response = post(proxy, "/memory/v1/users/deep-json" + path, deep)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "body_too_deep"


def test_the_memory_api_answers_413_past_the_limit(proxy) -> None:
    raw = json.dumps({"text": "x", "metadata": {"blob": "b" * LIMIT}}).encode()
    response = post(proxy, "/memory/v1/users/big-body/memories", raw)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_utf8_with_a_byte_order_mark_still_parses_and_utf16_is_not_measured() -> None:
    assert jsonbody.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        jsonbody.loads('{"a": 1}'.encode("utf-16"))
