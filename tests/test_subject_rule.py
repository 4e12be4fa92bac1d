"""One subject rule for the memory API and every hook: what the API cannot address gets no memory.

A request naming such a subject (header, metadata, body field) still goes upstream exactly as sent and
its answer comes back intact; only memory is refused, with ``x-memory-reason``, a counter and a log
line that never repeats the value. Real proxies over the emulator, the real openai SDK.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import openai
import pytest
from starlette.datastructures import Headers

from proxy.client import Memory, MemoryAPIError
from proxy.identity import tenant_for
from proxy.owner import MAX_SUBJECT, Owner, subject_problem

KEY = "sk-subject-rule"
HUGE = "u" * 1_000_000
LONG = "m" * 300
SAID = "I live in Lyon and my dog is called Rex."


@pytest.fixture(scope="module")
def proxy(make_proxy):
    # Header limits raised so a megabyte subject reaches the rule (by default such a header is a 431,
    # tests/test_client_limits.py): the rule must hold for whatever gets through.
    return make_proxy(max_header_bytes=2_000_000, max_header_field_bytes=2_000_000)


def sdk(proxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0, default_headers=headers)


def settle(runtime) -> None:
    """Let any after-hook that would capture the turn run (it runs once the answer is relayed)."""
    time.sleep(0.3)


def queued_subjects(runtime) -> list[str]:
    """Subjects of every job waiting in the proxy's queue (claimed here: nobody else works this queue)."""

    async def claim() -> list[str]:
        jobs = await runtime.state.claim("test-subject-rule", count=100)
        return [job.payload["subject"] for job in jobs]

    return asyncio.run(claim())


def stored_for(proxy, subject: str) -> int:
    """Memories stored for ``subject`` in the test key's tenant, asked of the store itself.

    (The memory API cannot be asked: it refuses such a subject, which is the point.)
    """
    runtime = proxy.app.state.runtime
    tenant = tenant_for(Headers({"authorization": f"Bearer {KEY}"}), runtime.settings, runtime.secret)
    owner = Owner.of(runtime.secret, tenant, subject)
    server_loop = runtime.janitor.get_loop()  # the memory service lives on the proxy's own event loop
    future = asyncio.run_coroutine_threadsafe(runtime.memory.of(owner).export(), server_loop)
    return len(future.result(timeout=10))


def assert_memory_refused(raw, reason: str) -> None:
    assert raw.headers["x-memory-status"] == "off" and raw.headers["x-memory-recalled"] == "0"
    assert raw.headers["x-memory-reason"] == reason
    assert "x-memory-subject" not in raw.headers


def test_the_rule() -> None:
    assert subject_problem("u42") is None and subject_problem("x" * MAX_SUBJECT) is None
    assert subject_problem("alice@example.com") is None and subject_problem("Zoë Łukasz 张伟") is None
    assert subject_problem("x" * (MAX_SUBJECT + 1)) == "subject-too-long"
    assert subject_problem("") == subject_problem("   ") == "subject-blank"
    for control in ("\x00", "\t", "\n", "\x1b", "\x7f"):
        assert subject_problem(f"a{control}b") == "subject-control-character", repr(control)
    assert "x" * 300 not in str(subject_problem("x" * 300))


def test_a_megabyte_x_memory_user_gets_no_memory_and_an_intact_answer(proxy, emulator, caplog) -> None:
    runtime = proxy.app.state.runtime
    captured, refused = runtime.counters["turns.captured"], runtime.counters["memory_off.subject-too-long"]
    messages = [{"role": "user", "content": SAID}]
    with caplog.at_level(logging.INFO, logger="memproxy"):
        raw = sdk(proxy, **{"X-Memory-User": HUGE}).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages
        )
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == f'You said: "{SAID}".'
    assert_memory_refused(raw, "subject-too-long")
    [upstream] = emulator.requests("/v1/chat")
    assert upstream["body"] == {"model": "gpt-4o-mini", "messages": messages}, "the body went up untouched"
    assert "x-memory-user" not in upstream["headers"]
    assert runtime.counters["memory_off.subject-too-long"] == refused + 1
    assert "subject-too-long" in caplog.text and "uuuuuuuu" not in caplog.text, "logged without the value"
    settle(runtime)
    assert runtime.counters["turns.captured"] == captured and HUGE not in queued_subjects(runtime)
    assert stored_for(proxy, HUGE) == 0


def test_a_long_metadata_user_id_on_responses_gets_no_memory(proxy, emulator) -> None:
    runtime = proxy.app.state.runtime
    captured = runtime.counters["turns.captured"]
    sent = {"model": "gpt-4o-mini", "instructions": "Be concise.", "input": SAID, "metadata": {"user_id": LONG}}
    raw = sdk(proxy).responses.with_raw_response.create(**sent)
    assert raw.parse().output_text == f'You said: "{SAID}". Instructions: "Be concise.".'
    assert_memory_refused(raw, "subject-too-long")
    assert emulator.requests("/v1/responses")[-1]["body"] == sent
    settle(runtime)
    assert runtime.counters["turns.captured"] == captured and LONG not in queued_subjects(runtime)
    assert stored_for(proxy, LONG) == 0
    # what the API could never list, export or erase
    with Memory(proxy.url, api_key=KEY) as memory, pytest.raises(MemoryAPIError) as caught:
        memory.user(LONG).list()
    assert caught.value.status == 400 and caught.value.body["error"]["code"] == "invalid_subject"


def test_body_fields_blank_and_control_characters_follow_the_same_rule(proxy, emulator) -> None:
    client = sdk(proxy)
    messages = [{"role": "user", "content": SAID}]
    for user, reason in (
        ("a\nb", "subject-control-character"),
        ("   ", "subject-blank"),
        ("s" * 257, "subject-too-long"),
    ):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, user=user)
        assert_memory_refused(raw, reason)
        assert emulator.requests("/v1/chat")[-1]["body"] == {"model": "gpt-4o-mini", "messages": messages, "user": user}
        raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input=SAID, safety_identifier=user)
        assert_memory_refused(raw, reason)
    settle(proxy.app.state.runtime)
    assert queued_subjects(proxy.app.state.runtime) == []


def test_the_longest_subject_gets_memory_and_the_api_reaches_it(proxy, emulator) -> None:
    longest = "L" * MAX_SUBJECT
    runtime = proxy.app.state.runtime
    with Memory(proxy.url, api_key=KEY) as memory:
        memory.user(longest).remember("Owns a sailing boat")
        raw = sdk(proxy, **{"X-Memory-User": longest}).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "What kind of boat do I own?"}]
        )
        assert raw.headers["x-memory-status"] == "ok" and "x-memory-reason" not in raw.headers
        settle(runtime)
        assert longest in queued_subjects(runtime), "its turn is queued like any other"
        assert memory.user(longest).forget()["deleted"]["memories"] == 1


def test_the_api_refuses_what_the_hooks_refuse(proxy) -> None:
    for path in ("x" * (MAX_SUBJECT + 1), "%20%20", "a%09b", "a%00b"):
        response = httpx.get(f"{proxy.url}/memory/v1/users/{path}/memories", headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 400, path
        assert response.json()["error"]["code"] == "invalid_subject"


def test_the_bridge_follows_the_rule(make_proxy, emulator, assistants_client) -> None:
    bridge = make_proxy(assistants="bridge")
    runtime = bridge.app.state.runtime
    client = assistants_client(bridge.url + "/v1", api_key=KEY)
    with Memory(bridge.url, api_key=KEY) as memory:  # a fact under the first 256 characters: never recalled
        memory.user(LONG[:MAX_SUBJECT]).remember("Likes green tea")
    assistant = client.beta.assistants.create(model="gpt-4.1-mini", instructions="Base.")
    for metadata in ({"thread": {"user_id": LONG}}, {"run": {"user_id": LONG}}):
        thread = client.beta.threads.create(metadata=metadata.get("thread"))
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=assistant.id,
            metadata=metadata.get("run"),
            poll_interval_ms=10,
            additional_messages=[{"role": "user", "content": SAID}],
        )
        assert run.status == "completed"
        [answer] = [m for m in client.beta.threads.messages.list(thread.id) if m.role == "assistant"]
        assert answer.content[0].text.value == f'You said: "{SAID}". Instructions: "Base.".'
        created = [r["body"] for r in emulator.requests("/v1/responses") if r["method"] == "POST"]
        assert created[-1]["instructions"] == "Base.", "no memory block"
    assert runtime.counters["memory_off.subject-too-long"] >= 2
    settle(runtime)
    assert runtime.counters["turns.captured"] == 0 and queued_subjects(runtime) == []
    assert stored_for(bridge, LONG) == 0
