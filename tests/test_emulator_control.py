"""The emulator's errors, headers, request recording and fault injection."""

from __future__ import annotations

import gzip
import time

import httpx
import openai
import pytest

from proxy.emulator.testing import serve

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three four five"}]}


def _stream_chat(client: openai.OpenAI, **extra) -> list[str]:
    """Stream a chat answer; the content deltas received."""
    stream = client.chat.completions.create(**CHAT, stream=True, **extra)
    return [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]


# --- errors and headers --------------------------------------------------------------------------


def test_unknown_route_is_openai_shaped_404(emulator, emulator_openai) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        emulator_openai.get("/does/not/exist", cast_to=object)
    assert info.value.body == {
        "message": "Invalid URL (GET /v1/does/not/exist)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert httpx.get(emulator.url + "/elsewhere").json()["error"]["message"] == "Invalid URL (GET /elsewhere)"


def test_bad_json_is_400_with_openai_message(emulator) -> None:
    for body in (b'{"model": ', b"[1, 2]"):
        response = httpx.post(
            emulator.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["message"].startswith("We could not parse the JSON body of your request.")
        assert error["type"] == "invalid_request_error"


def test_every_response_has_request_id_processing_time_and_rate_limits(emulator) -> None:
    ok = httpx.get(emulator.base_url + "/models")
    missing = httpx.get(emulator.base_url + "/files/file-nope")
    for response in (ok, missing):
        assert response.headers["x-request-id"].startswith("req_")
        assert int(response.headers["openai-processing-ms"]) >= 0
        assert int(response.headers["x-ratelimit-remaining-requests"]) > 0
        assert "x-ratelimit-limit-tokens" in response.headers
    recorded = emulator.requests()
    assert [entry["request_id"] for entry in recorded] == [ok.headers["x-request-id"], missing.headers["x-request-id"]]


def test_an_emulator_bug_is_an_openai_shaped_500(emulator, emulator_openai, monkeypatch) -> None:
    from proxy.emulator import chat

    def broken(body: dict) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(chat, "build_prompt", broken)
    with pytest.raises(openai.InternalServerError) as info:
        emulator_openai.chat.completions.create(**CHAT)
    assert info.value.body["type"] == "server_error"
    assert info.value.response.headers["x-request-id"] == emulator.requests()[-1]["request_id"]


def test_no_api_key_needed(emulator) -> None:
    assert httpx.get(emulator.base_url + "/models").status_code == 200
    assert emulator.requests()[-1]["has_authorization"] is False


def test_apps_do_not_share_state() -> None:
    with serve() as one, serve() as two:
        created = httpx.post(one.base_url + "/conversations", json={}).json()
        assert httpx.get(f"{one.base_url}/conversations/{created['id']}").status_code == 200
        assert httpx.get(f"{two.base_url}/conversations/{created['id']}").status_code == 404
        assert two.requests()[-1]["method"] == "GET" and len(two.requests()) == 1


# --- recording -----------------------------------------------------------------------------------


def test_requests_are_recorded_as_received(emulator, emulator_openai) -> None:
    emulator_openai.chat.completions.create(**CHAT, extra_headers={"X-Memory-User": "ann"})
    httpx.get(emulator.base_url + "/files?purpose=batch&limit=5&limit=6")
    httpx.post(emulator.base_url + "/files", content=b"\x00\xff", headers={"content-type": "application/octet-stream"})
    httpx.get(emulator.url + "/healthz")  # outside /v1: not recorded

    chat, listing, binary = emulator.requests()
    assert (chat["method"], chat["path"], chat["body"]) == ("POST", "/v1/chat/completions", CHAT)
    assert chat["headers"]["authorization"] == "Bearer sk-test" and chat["has_authorization"] is True
    assert chat["headers"]["x-memory-user"] == "ann"
    assert listing["query"] == "purpose=batch&limit=5&limit=6"
    assert listing["query_params"] == {"purpose": "batch", "limit": ["5", "6"]}
    assert listing["body"] is None
    assert binary["body"] == {"size": 2, "base64": "AP8="}

    httpx.delete(emulator.url + "/_emulator/requests")
    assert emulator.requests() == []


def test_bad_json_is_recorded_as_text(emulator) -> None:
    httpx.post(emulator.base_url + "/responses", content=b"{oops", headers={"content-type": "application/json"})
    assert emulator.requests()[-1]["body"] == "{oops"


# --- faults --------------------------------------------------------------------------------------


def test_status_fault_applies_once_then_clears(emulator, emulator_openai) -> None:
    emulator.fault(
        method="POST", path="/chat/completions", status=503, message="overloaded", headers={"x-request-id": "req_fixed"}
    )
    with pytest.raises(openai.InternalServerError) as info:
        emulator_openai.chat.completions.create(**CHAT)
    assert info.value.status_code == 503 and info.value.message.endswith("overloaded")
    assert info.value.body["type"] == "server_error"
    assert info.value.response.headers["x-request-id"] == "req_fixed"
    assert emulator_openai.chat.completions.create(**CHAT).choices[0].finish_reason == "stop"
    assert emulator.faults() == []
    assert emulator.requests()[0]["fault"]["status"] == 503 and emulator.requests()[1]["fault"] is None


def test_fault_matches_method_and_path_only(emulator, emulator_openai) -> None:
    emulator.fault(path="/v1/embeddings", status=500, times=0)
    emulator.fault(method="GET", path="/chat", status=500)
    emulator_openai.chat.completions.create(**CHAT)  # POST: the GET fault does not apply
    for _ in range(2):  # times=0: forever
        with pytest.raises(openai.InternalServerError):
            emulator_openai.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(emulator.faults()) == 2
    emulator.clear_faults()
    emulator_openai.embeddings.create(model="text-embedding-3-small", input="x")


def test_sdk_retries_through_a_transient_fault(emulator) -> None:
    emulator.fault(path="/chat/completions", status=429, times=2, headers={"retry-after-ms": "1"})
    with openai.OpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=2) as client:
        assert client.chat.completions.create(**CHAT).choices[0].message.content
    retries = [entry["headers"]["x-stainless-retry-count"] for entry in emulator.requests()]
    assert retries == ["0", "1", "2"]


def test_custom_error_body(emulator, emulator_openai) -> None:
    error = {"message": "bad key", "type": "auth", "code": "invalid_api_key", "param": None}
    emulator.fault(path="/models", status=401, body={"error": error})
    with pytest.raises(openai.AuthenticationError) as info:
        emulator_openai.models.list()
    assert info.value.code == "invalid_api_key"


def test_delay_makes_the_sdk_time_out(emulator, emulator_openai) -> None:
    emulator.fault(path="/models", delay=1.0)
    with pytest.raises(openai.APITimeoutError):
        emulator_openai.with_options(timeout=0.2).models.list()
    emulator.fault(path="/models", delay=0.2)
    started = time.monotonic()
    emulator_openai.models.list()
    assert time.monotonic() - started >= 0.2


def test_event_delay_spaces_streamed_events(emulator, emulator_openai) -> None:
    emulator.fault(path="/chat/completions", event_delay=0.05)
    arrivals = []
    for _chunk in emulator_openai.chat.completions.create(**CHAT, stream=True):
        arrivals.append(time.monotonic())
    # 9 chunks (role, 7 words, finish) + [DONE]: each event after the first waits 0.05 s
    assert len(arrivals) == 9
    assert arrivals[-1] - arrivals[0] >= 7 * 0.05


def test_drop_mid_stream_makes_the_sdk_raise(emulator, emulator_openai) -> None:
    emulator.fault(path="/chat/completions", drop_after=3)
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(emulator_openai.chat.completions.create(**CHAT, stream=True))
    assert len(received) == 3
    assert _stream_chat(emulator_openai)  # the next request is fine


def test_drop_mid_body_makes_the_sdk_raise(emulator, emulator_openai) -> None:
    emulator.fault(path="/models", drop_after=20)
    with pytest.raises(openai.APIConnectionError):
        emulator_openai.models.list()


def test_gzip_bodies_decode_in_the_sdk(emulator, emulator_openai) -> None:
    emulator.fault(path="/chat/completions", gzip=True, times=2)
    assert emulator_openai.chat.completions.create(**CHAT).choices[0].message.content.startswith("You said")
    assert "".join(_stream_chat(emulator_openai)) == 'You said: "one two three four five".'
    emulator.fault(path="/models", gzip=True)
    with httpx.stream("GET", emulator.base_url + "/models") as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert b'"object":"list"' in gzip.decompress(raw)


def test_per_request_fault_header(emulator, emulator_openai) -> None:
    emulator.fault(path="/chat/completions", status=500)  # the header takes precedence; this stays pending
    with pytest.raises(openai.RateLimitError) as info:
        emulator_openai.chat.completions.create(
            **CHAT, extra_headers={"x-emulator-fault": "status=429; message=slow down; header.retry-after=7"}
        )
    assert info.value.message.endswith("slow down")
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert len(emulator.faults()) == 1

    chunks = _stream_chat(emulator_openai, extra_headers={"x-emulator-fault": "gzip=true; event_delay=0.01"})
    assert "".join(chunks).startswith("You said")


@pytest.mark.parametrize("header", ["status", "status=abc", "delay=soon", "colour=red"])
def test_malformed_fault_header_is_400(emulator, header: str) -> None:
    response = httpx.get(emulator.base_url + "/models", headers={"x-emulator-fault": header})
    assert response.status_code == 400
    assert "error" in response.json()


def test_malformed_fault_registration_is_400(emulator) -> None:
    for body in ({"status": 1000}, {"colour": "red"}, ["not an object"]):
        assert httpx.post(emulator.url + "/_emulator/faults", json=body).status_code == 400
    assert httpx.post(emulator.url + "/_emulator/faults", content=b"{").status_code == 400
    assert emulator.faults() == []
