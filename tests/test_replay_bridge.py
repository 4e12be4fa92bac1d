"""The Assistants bridge on real OpenAI traffic: runs whose upstream answers are recorded Responses.

The replay (tests/replay.py) answers the bridge's Responses calls with recorded ones, in order
(``match_body=False``: the bridge writes its own request bodies), and the emulator behind it keeps
the conversations, in step with what the replay served. Every Assistants object and stream event the
client gets is checked against OpenAI's spec (the ``assistants_client`` fixture), and each finished
run must be queued as one turn.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from replay import Exchange, cassette
from test_replay import (
    RESPONSES_BG,
    RESPONSES_BG_STREAM,
    RESPONSES_BG_TOOL,
    RESPONSES_CONV_STREAM,
    RESPONSES_CONV_TOOL,
    RESPONSES_REASONING,
    RESPONSES_STREAM_REASONING,
    RESPONSES_STREAM_TOOL,
    answer_text,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

POLL = 20
QUESTION = "What is 2 + 2?"


@pytest.fixture
def bridge(make_proxy, replay):
    return make_proxy(
        upstream_url=replay.url + "/v1", assistants="bridge", extractor="verbatim", memory_recall_deadline_ms=5000
    )


@pytest.fixture
def client(bridge, assistants_client):
    return assistants_client(bridge.url + "/v1")


def responses(name: str) -> list[Exchange]:
    """A cassette's Responses calls (create, and polls of the background ones)."""
    return [exchange for exchange in cassette(name) if exchange.path.startswith("/v1/responses")]


def usage_of(*exchanges: Exchange) -> dict[str, int]:
    """Assistants usage of finished recorded responses: their input and output tokens summed."""
    used = [exchange.response()["usage"] for exchange in exchanges]
    prompt, completion = sum(u["input_tokens"] for u in used), sum(u["output_tokens"] for u in used)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def call_of(response: dict) -> dict:
    [call] = [item for item in response["output"] if item["type"] == "function_call"]
    return call


async def turns(bridge, expected: int) -> list[dict]:
    runtime = bridge.app.state.runtime
    deadline = time.monotonic() + 5
    while runtime.counters["turns.captured"] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    return [job.payload for job in await runtime.state.claim("replay-bridge", count=50)]


def streamed(client, **create) -> list:
    return list(client.beta.threads.runs.create(stream=True, **create))


def started(client, question: str = QUESTION):
    assistant = client.beta.assistants.create(model="gpt-4o", instructions="Answer briefly.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": question}])
    return assistant, thread


# --- streamed runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [RESPONSES_BG_STREAM, RESPONSES_CONV_STREAM])
async def test_a_streamed_run_is_the_recorded_stream_translated(bridge, client, replay, name) -> None:
    """gpt-4o (background stream: ``queued`` first, ``response.queued``) and gpt-4.1 (``obfuscation``)."""
    [exchange] = replay.play(responses(name), match_body=False)
    response = exchange.response()
    [message] = [item for item in response["output"] if item["type"] == "message"]
    assistant, thread = started(client)
    events = streamed(client, thread_id=thread.id, assistant_id=assistant.id)

    deltas = [event for event in events if event.event == "thread.message.delta"]
    upstream_deltas = [event for event in exchange.data() if event["type"] == "response.output_text.delta"]
    assert [event.event for event in events] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        *["thread.message.delta"] * len(upstream_deltas),
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    assert [d.data.delta.content[0].text.value for d in deltas] == [e["delta"] for e in upstream_deltas]
    completed = events[-3].data
    assert completed.id == message["id"] and completed.content[0].text.value == answer_text(response)
    run = events[-1].data
    assert run.status == "completed" and run.usage.model_dump() == usage_of(exchange)

    listed = client.beta.threads.messages.list(thread.id).data
    assert [(m.role, m.content[0].text.value) for m in listed] == [
        ("assistant", answer_text(response)),
        ("user", QUESTION),
    ]
    assert listed[0].run_id == run.id and listed[0].assistant_id == assistant.id
    sent = replay.served[0].received.json()
    assert sent["stream"] is True and sent["conversation"].startswith("conv_") and "background" not in sent
    [turn] = await turns(bridge, 1)
    assert turn["route"] == "assistants" and turn["user"] == [QUESTION]
    assert turn["assistant"] == [answer_text(response)] and turn["source"]["run_id"] == run.id


async def test_a_streamed_tool_round_trip(bridge, client, replay) -> None:
    """A function call streamed without sequence numbers (March 2025), its outputs, then the answer."""
    first, second = replay.play(responses(RESPONSES_STREAM_TOOL), match_body=False)
    call = call_of(first.response())
    assistant, thread = started(client, "What is the capital of France?")
    events = streamed(client, thread_id=thread.id, assistant_id=assistant.id)

    assert events[-1].event == "thread.run.requires_action"
    run = events[-1].data
    [required] = run.required_action.submit_tool_outputs.tool_calls
    assert (required.id, required.function.name, required.function.arguments) == (
        call["call_id"],
        call["name"],
        call["arguments"],
    )
    step_deltas = [e.data.delta.step_details.tool_calls[0] for e in events if e.event == "thread.run.step.delta"]
    assert step_deltas[0].id == call["call_id"] and step_deltas[0].function.name == call["name"]
    assert "".join(d.function.arguments for d in step_deltas) == call["arguments"]

    resumed = list(
        client.beta.threads.runs.submit_tool_outputs(
            run_id=run.id,
            thread_id=thread.id,
            tool_outputs=[{"tool_call_id": call["call_id"], "output": "Paris"}],
            stream=True,
        )
    )
    assert resumed[0].event == "thread.run.step.completed" and resumed[-1].event == "thread.run.completed"
    assert resumed[0].data.step_details.tool_calls[0].function.output == "Paris"
    assert resumed[-1].data.usage.model_dump() == usage_of(first, second)
    sent = replay.served[1].received.json()
    assert sent["input"] == [{"type": "function_call_output", "call_id": call["call_id"], "output": "Paris"}]
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "completed"), ("message_creation", "completed")]
    [turn] = await turns(bridge, 1)
    assert turn["user"] == ["What is the capital of France?"]
    assert turn["assistant"] == [answer_text(second.response())]


async def test_a_reasoning_model_streams_a_reasoning_item_then_a_call(bridge, client, replay) -> None:
    """gpt-5: the reasoning item (encrypted content, no summary) is no message and no step."""
    [exchange] = replay.play(responses(RESPONSES_STREAM_REASONING), match_body=False)
    assert [e["item"]["type"] for e in exchange.data() if e["type"] == "response.output_item.added"] == [
        "reasoning",
        "function_call",
    ]
    assistant, thread = started(client, "Calculate 100 * 200 / 3")
    events = streamed(client, thread_id=thread.id, assistant_id=assistant.id)
    assert not [e for e in events if e.event.startswith("thread.message")]
    run = events[-1].data
    assert run.status == "requires_action"
    assert run.required_action.submit_tool_outputs.tool_calls[0].function.arguments == '{"result":6666}'
    assert "gAAAA" not in json.dumps([e.data.model_dump() for e in events])
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "in_progress")]
    assert await turns(bridge, 0) == []  # waiting for tool outputs: not finished


@pytest.mark.parametrize("size", [1, 7])
def test_a_stream_cut_anywhere_translates_the_same(bridge, client, replay, size) -> None:
    """TCP may cut an SSE body anywhere, mid-line and mid-character: the bridge reads events, not chunks."""
    [exchange] = replay.play(responses(RESPONSES_CONV_STREAM), match_body=False)
    replay.chunk_size = size
    assistant, thread = started(client)
    events = streamed(client, thread_id=thread.id, assistant_id=assistant.id)
    assert events[-1].event == "thread.run.completed"
    assert "".join(
        e.data.delta.content[0].text.value for e in events if e.event == "thread.message.delta"
    ) == answer_text(exchange.response())


# --- polled runs (background responses) ---------------------------------------------------------


async def test_a_polled_run_follows_the_recorded_background_response(bridge, client, replay) -> None:
    created, in_progress, completed = replay.play(responses(RESPONSES_BG), match_body=False)
    assert [e.json()["status"] for e in (created, in_progress, completed)] == ["queued", "in_progress", "completed"]
    assistant, thread = started(client)
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "queued"
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "in_progress"
    run = client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=POLL)
    assert run.status == "completed" and run.usage.model_dump() == usage_of(completed)
    sent = replay.served[0].received.json()
    assert sent["background"] is True and "stream" not in sent
    assert [p.received.path for p in replay.served[1:]] == [created.path + "/" + created.json()["id"]] * 2
    [message, _] = client.beta.threads.messages.list(thread.id).data
    assert message.content[0].text.value == answer_text(completed.response())
    [turn] = await turns(bridge, 1)
    assert turn["user"] == [QUESTION] and turn["assistant"] == [answer_text(completed.response())]


async def test_a_polled_tool_round_trip(bridge, client, replay) -> None:
    exchanges = replay.play(responses(RESPONSES_BG_TOOL), match_body=False)
    call = call_of(exchanges[1].response())
    assistant, thread = started(client, "What is the weather in Paris? Use the get_weather tool.")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL
    )
    assert run.status == "requires_action"
    assert run.required_action.submit_tool_outputs.tool_calls[0].id == call["call_id"]
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call["call_id"], "output": "Sunny and 72F in Paris"}],
        poll_interval_ms=POLL,
    )
    assert run.status == "completed" and run.usage.model_dump() == usage_of(exchanges[1], exchanges[-1])
    [turn] = await turns(bridge, 1)
    assert turn["assistant"] == [answer_text(exchanges[-1].response())]


def test_a_polled_run_of_a_reasoning_model(bridge, client, replay) -> None:
    """A response that is already complete when created (no background), reasoning item first."""
    first, _ = replay.play(responses(RESPONSES_REASONING), match_body=False)
    assistant, thread = started(client, "How do I cross the street?")
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed" and run.usage.model_dump() == usage_of(first)
    [message, _] = client.beta.threads.messages.list(thread.id).data
    assert message.content[0].text.value == answer_text(first.response())
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert [s.step_details.type for s in steps] == ["message_creation"]
    replay.reset()  # the cassette's second response was not asked for


# --- whole cassettes: the thread is the recorded conversation ---------------------------------------


def test_a_thread_on_the_recorded_conversation_with_a_tool_round_trip(bridge, client, replay) -> None:
    """Conversation created, a function call, its output, the answer, conversation deleted: all recorded."""
    exchanges = replay.play(cassette(RESPONSES_CONV_TOOL), match_body=False)
    conversation = exchanges[0].json()["id"]
    call = call_of(exchanges[1].response())
    assistant = client.beta.assistants.create(model="gpt-4.1")
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "Call get_conversation_code and reply with only the returned code."}]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL
    )
    assert run.status == "requires_action"
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call["call_id"], "output": "TOOL-PAI-5222"}],
        poll_interval_ms=POLL,
    )
    assert run.status == "completed"
    assert [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id).data] == [
        "TOOL-PAI-5222",
        "Call get_conversation_code and reply with only the returned code.",
    ]
    assert client.beta.threads.delete(thread.id).deleted
    assert not replay.pending
    assert {p.received.json().get("conversation") for p in replay.served if p.exchange.path == "/v1/responses"} == {
        conversation
    }


def test_a_thread_on_the_recorded_conversation_streamed(bridge, client, replay) -> None:
    replay.play(cassette(RESPONSES_CONV_STREAM), match_body=False)
    assistant = client.beta.assistants.create(model="gpt-4.1")
    thread = client.beta.threads.create()
    events = streamed(
        client,
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_messages=[{"role": "user", "content": "Reply exactly: streamed"}],
    )
    assert events[-1].event == "thread.run.completed"
    assert [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id).data] == [
        "streamed",
        "Reply exactly: streamed",
    ]
    assert client.beta.threads.delete(thread.id).deleted and not replay.pending
