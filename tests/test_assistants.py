"""The Assistants v2 API through memproxy, with the real openai SDK, in both modes.

bridge: the proxy serves Assistants itself on the emulator's Responses + Conversations API.
passthrough: the proxy forwards Assistants calls to the emulator, which runs the same engine
in-process. Every answer and stream event is validated against the OpenAPI spec by the
``assistants_client`` fixture.
"""

from __future__ import annotations

import openai
import pytest
from openai import AssistantEventHandler
from typing_extensions import override

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL = "gpt-4.1-mini"
POLL = 10
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module", params=["bridge", "passthrough"])
def proxy(request, make_proxy):
    return make_proxy(assistants=request.param)


@pytest.fixture
def client(proxy, emulator, assistants_client) -> openai.OpenAI:
    return assistants_client(proxy.url + "/v1")


def texts(client: openai.OpenAI, thread_id: str, **params) -> list[tuple[str, str]]:
    """(role, text) of a thread's messages, oldest first."""
    page = client.beta.threads.messages.list(thread_id, order="asc", **params)
    return [(m.role, "".join(block.text.value for block in m.content if block.type == "text")) for m in page.data]


class Recorder(AssistantEventHandler):
    """Records what an SDK user of the stream helpers sees."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.text = ""
        self.tool_calls: list = []
        self.messages: list = []

    @override
    def on_event(self, event) -> None:
        self.events.append(event.event)

    @override
    def on_text_delta(self, delta, snapshot) -> None:
        self.text += delta.value

    @override
    def on_tool_call_done(self, tool_call) -> None:
        self.tool_calls.append(tool_call)

    @override
    def on_message_done(self, message) -> None:
        self.messages.append(message)


# --- assistants ----------------------------------------------------------------------------------


def test_assistant_crud_and_pagination(client) -> None:
    created = client.beta.assistants.create(
        model=MODEL, name="Helper", instructions="Be brief.", tools=[WEATHER], metadata={"team": "a"}, temperature=0.5
    )
    assert created.id.startswith("asst_") and created.tools[0].function.name == "get_weather"
    assert client.beta.assistants.retrieve(created.id).model_dump() == created.model_dump()

    updated = client.beta.assistants.update(created.id, name="Renamed", metadata={"team": "b"})
    assert (updated.name, updated.metadata, updated.instructions, updated.temperature) == (
        "Renamed",
        {"team": "b"},
        "Be brief.",
        0.5,
    )

    others = [client.beta.assistants.create(model=MODEL, name=f"n{i}").id for i in range(2)]
    ids = [created.id, *others]
    first = client.beta.assistants.list(limit=2, order="asc")
    assert [a.id for a in first.data] == ids[:2] and first.has_more
    rest = client.beta.assistants.list(limit=2, order="asc", after=first.last_id)
    assert [a.id for a in rest.data] == ids[2:] and not rest.has_more
    assert [a.id for a in client.beta.assistants.list(order="desc")] == ids[::-1]
    assert [a.id for a in client.beta.assistants.list(order="asc", before=ids[2]).data] == ids[:2]

    assert client.beta.assistants.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.retrieve(created.id)


# --- threads and messages -----------------------------------------------------------------------


def test_thread_crud(client) -> None:
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "Hi, I live in Oslo."}], metadata={"user_id": "u1"}
    )
    assert thread.id.startswith("thread_") and thread.metadata == {"user_id": "u1"}
    assert client.beta.threads.retrieve(thread.id).metadata == {"user_id": "u1"}
    assert texts(client, thread.id) == [("user", "Hi, I live in Oslo.")]

    updated = client.beta.threads.update(thread.id, metadata={"user_id": "u2", "topic": "travel"})
    assert updated.metadata == {"user_id": "u2", "topic": "travel"}
    assert client.beta.threads.retrieve(thread.id).metadata == updated.metadata

    assert client.beta.threads.delete(thread.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)


def test_messages_crud_and_pagination(client) -> None:
    thread = client.beta.threads.create()
    first = client.beta.threads.messages.create(thread.id, role="user", content="one", metadata={"k": "v"})
    second = client.beta.threads.messages.create(thread.id, role="assistant", content=[{"type": "text", "text": "two"}])
    third = client.beta.threads.messages.create(thread.id, role="user", content="three")
    assert (first.role, first.content[0].text.value, first.metadata, first.thread_id) == (
        "user",
        "one",
        {"k": "v"},
        thread.id,
    )
    assert (second.role, second.content[0].text.value) == ("assistant", "two")

    got = client.beta.threads.messages.retrieve(first.id, thread_id=thread.id)
    assert got.model_dump() == first.model_dump()
    changed = client.beta.threads.messages.update(first.id, thread_id=thread.id, metadata={"k": "w"})
    assert changed.metadata == {"k": "w"}
    assert client.beta.threads.messages.retrieve(first.id, thread_id=thread.id).metadata == {"k": "w"}

    ids = [first.id, second.id, third.id]
    page = client.beta.threads.messages.list(thread.id, limit=2)
    assert [m.id for m in page.data] == ids[::-1][:2] and page.has_more
    tail = client.beta.threads.messages.list(thread.id, limit=2, after=page.last_id)
    assert [m.id for m in tail.data] == [first.id] and not tail.has_more
    assert [m.id for m in client.beta.threads.messages.list(thread.id, order="asc", before=third.id).data] == ids[:2]
    assert [m.id for m in client.beta.threads.messages.list(thread.id, order="asc")] == ids

    assert client.beta.threads.messages.delete(second.id, thread_id=thread.id).deleted
    assert [m.id for m in client.beta.threads.messages.list(thread.id, order="asc")] == [first.id, third.id]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve(second.id, thread_id=thread.id)


# --- runs ----------------------------------------------------------------------------------------


def test_create_and_poll_uses_assistant_and_run_instructions(client) -> None:
    assistant = client.beta.assistants.create(model=MODEL, instructions="Answer briefly.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "What is the capital of Norway?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_instructions="Mention fjords.",
        metadata={"trace": "1"},
        poll_interval_ms=POLL,
    )
    assert run.status == "completed" and run.instructions == "Answer briefly.\n\nMention fjords."
    assert run.usage.total_tokens > 0 and run.completed_at and run.metadata == {"trace": "1"}
    reply = texts(client, thread.id)[-1]
    assert reply == (
        "assistant",
        'You said: "What is the capital of Norway?". Instructions: "Answer briefly.\n\nMention fjords.".',
    )
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert (message.run_id, message.assistant_id) == (run.id, assistant.id)

    override_run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        instructions="Only this.",
        additional_messages=[{"role": "user", "content": "And Sweden?"}],
        poll_interval_ms=POLL,
    )
    assert override_run.instructions == "Only this."
    assert texts(client, thread.id)[-2:] == [
        ("user", "And Sweden?"),
        ("assistant", 'You said: "And Sweden?". Instructions: "Only this.".'),
    ]
    assert [m.id for m in client.beta.threads.messages.list(thread.id, run_id=override_run.id)] == [
        client.beta.threads.messages.list(thread.id).data[0].id
    ]


def test_runs_list_retrieve_update_and_steps(client) -> None:
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    runs = [
        client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL)
        for _ in range(2)
    ]
    listed = client.beta.threads.runs.list(thread.id, limit=1)
    assert [r.id for r in listed.data] == [runs[1].id] and listed.has_more
    assert [r.id for r in client.beta.threads.runs.list(thread.id, order="asc")] == [r.id for r in runs]

    got = client.beta.threads.runs.retrieve(runs[0].id, thread_id=thread.id)
    assert (got.status, got.assistant_id, got.thread_id) == ("completed", assistant.id, thread.id)
    assert client.beta.threads.runs.update(runs[0].id, thread_id=thread.id, metadata={"a": "b"}).metadata == {"a": "b"}
    assert client.beta.threads.runs.retrieve(runs[0].id, thread_id=thread.id).metadata == {"a": "b"}

    steps = client.beta.threads.runs.steps.list(runs[0].id, thread_id=thread.id)
    assert [(s.type, s.status) for s in steps.data] == [("message_creation", "completed")]
    reply = client.beta.threads.messages.list(thread.id, run_id=runs[0].id).data[0]
    assert steps.data[0].step_details.message_creation.message_id == reply.id
    step = client.beta.threads.runs.steps.retrieve(steps.data[0].id, thread_id=thread.id, run_id=runs[0].id)
    assert step.model_dump() == steps.data[0].model_dump()


def test_stream_run_with_event_handler(client) -> None:
    assistant = client.beta.assistants.create(model=MODEL, instructions="Be kind.")
    thread = client.beta.threads.create()
    handler = Recorder()
    with client.beta.threads.runs.stream(
        thread_id=thread.id,
        assistant_id=assistant.id,
        event_handler=handler,
        additional_messages=[{"role": "user", "content": "Stream please"}],
    ) as stream:
        stream.until_done()
        final = stream.get_final_run()
    expected = 'You said: "Stream please". Instructions: "Be kind.".'
    assert handler.text == expected and handler.messages[0].content[0].text.value == expected
    assert handler.events[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert handler.events[-1] == "thread.run.completed" and "thread.message.delta" in handler.events
    assert final.status == "completed"
    assert texts(client, thread.id)[-1] == ("assistant", expected)
    assert client.beta.threads.runs.retrieve(final.id, thread_id=thread.id).status == "completed"


# --- function tools -------------------------------------------------------------------------------


def _tool_thread(client):
    assistant = client.beta.assistants.create(model=MODEL, tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Please call get_weather for Oslo."}])
    return assistant, thread


def test_function_tools_polled(client) -> None:
    assistant, thread = _tool_thread(client)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL
    )
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    assert call.function.name == "get_weather" and "Oslo" in call.function.arguments

    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_wrong", "output": "x"}]
        )
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}],
        poll_interval_ms=POLL,
    )
    assert done.status == "completed" and done.required_action is None
    assert 'Tool get_weather returned: "sunny".' in texts(client, thread.id)[-1][1]

    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "completed"), ("message_creation", "completed")]
    tool = steps[0].step_details.tool_calls[0]
    assert (tool.id, tool.function.name, tool.function.output) == (call.id, "get_weather", "sunny")


def test_function_tools_streamed(client) -> None:
    assistant, thread = _tool_thread(client)
    first = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=first) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert run.status == "requires_action" and first.events[-1] == "thread.run.requires_action"
    assert [c.function.name for c in first.tool_calls] == ["get_weather"]
    assert (
        first.tool_calls[0].function.arguments
        == run.required_action.submit_tool_outputs.tool_calls[0].function.arguments
    )
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id

    second = Recorder()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call_id, "output": "rainy"}],
        event_handler=second,
    ) as stream:
        stream.until_done()
    assert second.events[0] == "thread.run.step.completed" and second.events[-1] == "thread.run.completed"
    assert 'Tool get_weather returned: "rainy".' in second.text
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"


def test_cancel_run_waiting_for_tool_outputs(client) -> None:
    assistant, thread = _tool_thread(client)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL
    )
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert (step.type, step.status) == ("tool_calls", "cancelled")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel"):
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


# --- create and run ------------------------------------------------------------------------------


def test_create_and_run_variants(client) -> None:
    assistant = client.beta.assistants.create(model=MODEL, instructions="Be terse.")
    thread_param = {"messages": [{"role": "user", "content": "Hello there"}], "metadata": {"user_id": "u9"}}

    run = client.beta.threads.create_and_run(assistant_id=assistant.id, thread=thread_param)
    assert run.status in ("queued", "in_progress", "completed")
    run = client.beta.threads.runs.poll(run.id, thread_id=run.thread_id, poll_interval_ms=POLL)
    assert run.status == "completed"
    assert client.beta.threads.retrieve(run.thread_id).metadata == {"user_id": "u9"}

    polled = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread=thread_param, instructions="Override.", poll_interval_ms=POLL
    )
    assert polled.status == "completed" and polled.thread_id != run.thread_id
    assert texts(client, polled.thread_id) == [
        ("user", "Hello there"),
        ("assistant", 'You said: "Hello there". Instructions: "Override.".'),
    ]

    handler = Recorder()
    with client.beta.threads.create_and_run_stream(
        assistant_id=assistant.id, thread=thread_param, event_handler=handler
    ) as stream:
        stream.until_done()
        final = stream.get_final_run()
    assert handler.events[:2] == ["thread.created", "thread.run.created"] and final.status == "completed"
    assert texts(client, final.thread_id)[-1] == ("assistant", handler.text)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, needle",
    [({f"k{i}": "v" for i in range(17)}, "16"), ({"k" * 65: "v"}, "64"), ({"k": "v" * 513}, "512")],
    ids=["17-keys", "long-key", "long-value"],
)
def test_metadata_limits(client, metadata, needle) -> None:
    thread = client.beta.threads.create()
    calls = [
        lambda: client.beta.assistants.create(model=MODEL, metadata=metadata),
        lambda: client.beta.threads.create(metadata=metadata),
        lambda: client.beta.threads.update(thread.id, metadata=metadata),
        lambda: client.beta.threads.messages.create(thread.id, role="user", content="x", metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError, match=needle) as caught:
            call()
        assert caught.value.param.startswith("metadata")
    assert client.beta.threads.retrieve(thread.id).metadata == {}


def test_unsupported_features_are_refused_by_name(client) -> None:
    with pytest.raises(openai.BadRequestError, match="file_search"):
        client.beta.assistants.create(model=MODEL, tools=[{"type": "file_search"}])
    with pytest.raises(openai.BadRequestError, match="code_interpreter"):
        client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
    with pytest.raises(openai.BadRequestError, match="file_search"):
        client.beta.threads.create(tool_resources={"file_search": {"vector_store_ids": ["vs_1"]}})
    thread = client.beta.threads.create()
    with pytest.raises(openai.BadRequestError, match="attachments"):
        client.beta.threads.messages.create(
            thread.id, role="user", content="x", attachments=[{"file_id": "file-1", "tools": [{"type": "file_search"}]}]
        )
    assistant = client.beta.assistants.create(model=MODEL)
    with pytest.raises(openai.BadRequestError, match="code_interpreter"):
        client.beta.threads.create_and_run(
            assistant_id=assistant.id,
            thread={"messages": []},
            tool_resources={"code_interpreter": {"file_ids": ["file-1"]}},
        )
    with pytest.raises(openai.BadRequestError, match="max_prompt_tokens"):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, max_prompt_tokens=500)
    assert client.beta.threads.runs.list(thread.id).data == []
    assert client.beta.assistants.list().data == [assistant]


def test_unknown_ids_answer_404(client) -> None:
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError, match="asst_nope"):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_nope")
    with pytest.raises(openai.NotFoundError, match="thread_nope"):
        client.beta.threads.messages.list("thread_nope")
    with pytest.raises(openai.NotFoundError, match="run_nope"):
        client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)


def test_a_thread_with_an_active_run_refuses_another(client) -> None:
    assistant, thread = _tool_thread(client)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL
    )
    assert run.status == "requires_action"
    with pytest.raises(openai.BadRequestError, match="active"):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    with pytest.raises(openai.BadRequestError, match="active"):
        client.beta.threads.messages.create(thread.id, role="user", content="more")


def test_image_content_parts_round_trip(client) -> None:
    thread = client.beta.threads.create()
    created = client.beta.threads.messages.create(
        thread.id,
        role="user",
        content=[
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            {"type": "image_file", "image_file": {"file_id": "file-abc"}},
        ],
    )
    got = client.beta.threads.messages.retrieve(created.id, thread_id=thread.id)
    assert [block.type for block in got.content] == ["text", "image_url", "image_file"]
    assert (got.content[1].image_url.url, got.content[1].image_url.detail) == ("https://example.com/cat.png", "low")
    assert got.content[2].image_file.file_id == "file-abc"
    with pytest.raises(openai.BadRequestError, match="user messages"):
        client.beta.threads.messages.create(
            thread.id,
            role="assistant",
            content=[{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
        )
