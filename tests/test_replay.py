"""Real recorded OpenAI traffic through the proxy: what the client gets back, and what the taps capture.

The upstream is the replay (tests/replay.py) of the recordings in ``../shared/data/recorded-openai/``;
the client is the openai SDK. Every recorded exchange must reach the client byte for byte, with its
recorded headers, and reach the upstream as recorded; each finished turn must be queued once with the
user's text and the answer's text.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import openai
import pytest
from replay import Exchange, Replay, cassette, cassette_names

RESPONSES_BG = "test_openai_responses_test_background_mode_vcr"
RESPONSES_BG_STREAM = "test_openai_responses_test_background_mode_streaming_vcr"
RESPONSES_BG_TOOL = "test_openai_responses_test_background_mode_with_tool_vcr"
RESPONSES_CONV_STREAM = "test_openai_responses_test_openai_conversation_id_streaming_provider_details"
RESPONSES_CONV_TOOL = "test_openai_responses_test_openai_conversation_id_tool_call_continuation"
RESPONSES_PREVIOUS = "test_openai_responses_test_openai_previous_response_id"
RESPONSES_REASONING = "test_openai_responses_test_openai_responses_model_thinking_part"
RESPONSES_STREAM_TOOL = "test_openai_responses_test_openai_responses_stream"
RESPONSES_STREAM_REASONING = "test_openai_responses_test_openai_responses_streaming_usage"
CHAT_TOOLS = "test_openai_test_multiple_agent_tool_calls"
MIXED_REASONING = "test_openai_test_openai_model_thinking_part"
CHAT_TOOL_OUTPUT = "test_openai_test_openai_tool_output"
CHAT_STREAM_TOOL = "test_openai_test_run_stream_sync_streams_real_model"
CHAT_USER = "test_openai_test_user_id"

MEMORY_HEADERS = ("x-memory-status", "x-memory-recalled", "x-memory-subject", "x-memory-mode", "x-memory-reason")
"""What the proxy adds to an answer; everything else must be the upstream's."""


def answered(client: openai.OpenAI, exchange: Exchange):
    """Make the recorded call with the SDK; the raw HTTP response, its body read in full."""
    body = exchange.request if isinstance(exchange.request, dict) else {}
    method, path = exchange.method, exchange.path
    if (method, path) == ("POST", "/v1/responses"):
        call = client.responses.with_streaming_response.create(**body)
    elif method == "GET" and path.startswith("/v1/responses/"):
        call = client.responses.with_streaming_response.retrieve(path.rsplit("/", 1)[1])
    elif (method, path) == ("POST", "/v1/chat/completions"):
        call = client.chat.completions.with_streaming_response.create(**body)
    elif (method, path) == ("POST", "/v1/conversations"):
        call = client.conversations.with_streaming_response.create(**body)
    elif method == "DELETE" and path.startswith("/v1/conversations/"):
        call = client.conversations.with_streaming_response.delete(path.rsplit("/", 1)[1])
    else:
        raise AssertionError(f"no SDK call known for {method} {path}")
    with call as response:
        response.read()
        return response


def replayed(client: openai.OpenAI, replay: Replay, name: str) -> Iterator[tuple[Exchange, object]]:
    """Play one cassette through the proxy, exchange by exchange: (exchange, the client's raw response)."""
    for exchange in replay.play(cassette(name)):
        yield exchange, answered(client, exchange)


@pytest.fixture
def user() -> str:
    return f"replay-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(make_proxy, replay):
    return make_proxy(upstream_url=replay.url + "/v1", extractor="verbatim", memory_recall_deadline_ms=5000)


@pytest.fixture
def client(proxy, user) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=proxy.url + "/v1", api_key="sk-replay", max_retries=0, default_headers={"X-Memory-User": user}
    ) as client:
        yield client


# --- transparency -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", cassette_names() or ["no-recordings"])  # none: the replay fixture skips, saying why
def test_every_recorded_exchange_reaches_the_client_as_recorded(client, replay, name) -> None:
    exchanges = 0
    for exchange, response in replayed(client, replay, name):
        exchanges += 1
        assert response.status_code == exchange.status, exchange.name
        assert response.http_response.content == exchange.body, f"{exchange.name}: body changed on the way"
        got = response.headers
        for header, value in exchange.headers:
            assert header in got and value in got.get_list(header), f"{exchange.name}: {header} lost or changed"
        if exchange.stream:
            assert got["cache-control"] == "no-cache" and got["x-accel-buffering"] == "no"
        assert got.get("x-memory-status") != "degraded", exchange.name
        assert not {name for name in got if name.startswith("x-memory")} - set(MEMORY_HEADERS)
    assert exchanges and not replay.pending, f"{name}: recorded exchanges left unplayed"
    for played in replay.served:  # and the upstream got what OpenAI got, without memproxy's headers
        assert played.received.json() == played.exchange.request or played.exchange.request is None
        assert not {h for h in played.received.headers if h.startswith("x-memory")}
        assert played.received.headers["authorization"] == "Bearer sk-replay"


STREAMS = [RESPONSES_BG_STREAM, RESPONSES_CONV_STREAM, RESPONSES_STREAM_REASONING, CHAT_STREAM_TOOL]


@pytest.mark.parametrize("name", STREAMS)
async def test_a_stream_sent_a_byte_at_a_time_is_relayed_and_captured(proxy, client, replay, name) -> None:
    """TCP may cut an SSE body anywhere, mid-line and mid-character: the tap parses events, not chunks."""
    replay.chunk_size = 1
    for exchange, response in replayed(client, replay, name):
        assert response.http_response.content == exchange.body
    [turn] = await captured(proxy, 1)
    assert turn["user"] and turn["turn_id"] in str([exchange.data() for exchange in cassette(name)])


def test_streams_arrive_event_by_event(client, replay) -> None:
    """A stream is relayed as the upstream sends it, not buffered: each event is read before the next is sent."""
    replay.event_delay = 0.05
    try:
        [exchange] = replay.play(cassette(RESPONSES_BG_STREAM))
        body = dict(exchange.request)
        arrivals = []
        with client.responses.with_streaming_response.create(**body) as response:
            for _ in response.iter_lines():
                arrivals.append(time.monotonic())
        assert arrivals[-1] - arrivals[0] >= 0.05 * (len(exchange.events) - 2)
    finally:
        replay.event_delay = 0.0


def test_the_sdk_parses_every_recorded_stream_event(client, replay) -> None:
    """Sequence numbers, reasoning items, obfuscation and all: the SDK's typed stream takes what came through."""
    for name in (RESPONSES_BG_STREAM, RESPONSES_STREAM_REASONING, RESPONSES_CONV_STREAM):
        replay.reset()
        exchanges = replay.play(cassette(name))
        stream_exchange = next(exchange for exchange in exchanges if exchange.stream)
        for exchange in exchanges:
            if exchange is not stream_exchange:
                answered(client, exchange)
                continue
            events = list(client.responses.create(**exchange.request))
            assert [event.type for event in events] == [event["type"] for event in exchange.data()]
            assert [event.sequence_number for event in events if hasattr(event, "sequence_number")]
        replay.reset()


# --- what the taps capture ----------------------------------------------------------------------------


async def captured(proxy, expected: int) -> list[dict]:
    """The queued turns (job payloads), once ``expected`` were captured and no more came."""
    runtime = proxy.app.state.runtime
    deadline = time.monotonic() + 5
    while runtime.counters["turns.captured"] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # a tap finishes after the client has its answer: let a stray one land
    jobs = await runtime.state.claim("replay-test", count=50)
    return [job.payload for job in jobs]


def answer_text(response: dict) -> str:
    return "\n".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


async def test_a_streamed_background_response_is_captured(proxy, client, replay, user) -> None:
    [exchange] = [exchange for exchange, _ in replayed(client, replay, RESPONSES_BG_STREAM)]
    [turn] = await captured(proxy, 1)
    assert turn["route"] == "responses" and turn["subject"] == user
    assert turn["user"] == ["What is 2 + 2?"] and turn["assistant"] == ["2 + 2 equals 4."]
    assert turn["turn_id"] == exchange.response()["id"] == turn["source"]["response_id"]
    assert turn["model"] == "gpt-4o-2024-08-06"


async def test_a_polled_background_response_is_captured_by_the_poll_that_sees_it_finish(
    proxy, client, replay, user
) -> None:
    statuses = [response.http_response.json()["status"] for _, response in replayed(client, replay, RESPONSES_BG)]
    assert statuses == ["queued", "in_progress", "completed"]
    client.responses.retrieve(replay.served[-1].exchange.json()["id"])  # completed seen twice: captured once
    [turn] = await captured(proxy, 1)
    assert turn["user"] == ["What is 2 + 2?"] and turn["assistant"] == ["2 + 2 equals 4."]
    assert turn["turn_id"] == "resp_06a562f31ab7703300698b9df109c481979ebf760b2ff5fc75"


async def test_a_response_on_a_conversation_is_captured_with_it(proxy, client, replay, user) -> None:
    list(replayed(client, replay, RESPONSES_CONV_STREAM))
    [turn] = await captured(proxy, 1)
    assert turn["user"] == ["Reply exactly: streamed"] and turn["assistant"] == ["streamed"]
    assert turn["source"] == {
        "response_id": "resp_01000000000000000000000000000000000000000000000000",
        "conversation_id": "conv_010000000000000000000000000000000000000000000000",
    }


async def test_a_conversation_without_a_named_user_is_its_own_subject(proxy, replay) -> None:
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-replay", max_retries=0) as anonymous:
        list(replayed(anonymous, replay, RESPONSES_CONV_STREAM))
    [turn] = await captured(proxy, 1)
    assert turn["subject"] == "conversation:conv_010000000000000000000000000000000000000000000000"


async def test_reasoning_items_are_no_part_of_the_answer(proxy, client, replay) -> None:
    exchanges = [exchange for exchange, _ in replayed(client, replay, RESPONSES_REASONING)]
    turns = sorted(await captured(proxy, 2), key=lambda turn: turn["turn_id"] != exchanges[0].response()["id"])
    assert [turn["user"] for turn in turns] == [
        ["How do I cross the street?"],
        ["Considering the way to cross the street, analogously, how do I cross the river?"],
    ]
    for turn, exchange in zip(turns, exchanges, strict=True):
        response = exchange.response()
        assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
        assert turn["assistant"] == [answer_text(response)] and "gAAAA" not in turn["assistant"][0]


async def test_a_streamed_reasoning_model_answering_with_a_tool_call(proxy, client, replay) -> None:
    """gpt-5 with ``tool_choice: required``: a reasoning item then the call; the call is the answer."""
    list(replayed(client, replay, RESPONSES_STREAM_REASONING))
    [turn] = await captured(proxy, 1)
    assert turn["user"] == ["Calculate 100 * 200 / 3"] and turn["assistant"] == [""]
    assert turn["model"] == "gpt-5-2025-08-07"


@pytest.mark.parametrize(
    ("name", "question"),
    [
        (RESPONSES_STREAM_TOOL, "What is the capital of France?"),
        (RESPONSES_BG_TOOL, "What is the weather in Paris? Use the get_weather tool."),
        (RESPONSES_CONV_TOOL, "Call get_conversation_code and reply with only the returned code."),
    ],
    ids=["stream", "background", "conversation"],
)
async def test_a_tool_round_trip_is_one_turn_captured_at_the_call(proxy, client, replay, name, question) -> None:
    """The user's message is captured once, with the response that calls the tool; the continuation
    (function_call_output in, the final answer out) brings no user text, so it adds no job.

    In the background cassette the first poll already sees the call completed: it must not outrun
    the park of the create call's tap (``PARK_WAITS``).
    """
    exchanges = [exchange for exchange, _ in replayed(client, replay, name)]
    [turn] = await captured(proxy, 1)
    asking = next(exchange for exchange in exchanges if exchange.method == "POST" and exchange.response())
    assert turn["turn_id"] == asking.response()["id"]
    assert turn["user"] == [question] and turn["assistant"] == [""]


async def test_a_response_that_is_not_completed_is_not_captured(proxy, client, replay) -> None:
    """This cassette is hand-written (``resp_1234``, status ``complete``, which the API never answers)."""
    list(replayed(client, replay, RESPONSES_PREVIOUS))
    assert await captured(proxy, 0) == []


async def test_chat_completions_are_captured_streamed_or_not(proxy, client, replay, user) -> None:
    list(replayed(client, replay, MIXED_REASONING))
    turns = sorted(await captured(proxy, 2), key=lambda turn: turn["route"])
    assert [turn["route"] for turn in turns] == ["chat", "responses"]
    chat, responses = turns
    assert chat["user"] == ["Considering the way to cross the street, analogously, how do I cross the river?"]
    assert chat["assistant"][0].startswith("When it comes to crossing a river safely")
    assert chat["turn_id"] == chat["source"]["completion_id"] == replay.served[-1].exchange.json()["id"]
    assert responses["user"] == ["How do I cross the street?"]
    assert responses["assistant"][0].startswith("I'm happy to help.")


async def test_a_chat_completion_names_its_user_in_the_body(proxy, replay) -> None:
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-replay", max_retries=0) as anonymous:
        list(replayed(anonymous, replay, CHAT_USER))
    [turn] = await captured(proxy, 1)
    assert turn["subject"] == "user_id"  # the recorded request's ``user``
    assert turn["user"] == ["hello"] and turn["assistant"] == ["Hello! How can I assist you today?"]
    assert turn["turn_id"] == "chatcmpl-BFfJeRdAVFPUVWxV3OYH1tSR5KvrI"


@pytest.mark.parametrize(
    ("name", "question"),
    [
        (CHAT_TOOLS, "What is the capital of England?"),
        (CHAT_TOOL_OUTPUT, "What is the largest city in the user country?"),
        (CHAT_STREAM_TOOL, "What is the capital of the UK? Use the tool, then answer."),
    ],
    ids=["json", "json-required", "stream"],
)
async def test_a_chat_tool_round_trip_is_captured_at_the_call(proxy, client, replay, name, question) -> None:
    list(replayed(client, replay, name))
    [turn] = await captured(proxy, 1)
    assert turn["route"] == "chat" and turn["user"] == [question] and turn["assistant"] == [""]
    first = replay.served[0].exchange
    completion_id = first.json()["id"] if not first.stream else first.data()[0]["id"]
    assert turn["turn_id"] == completion_id
