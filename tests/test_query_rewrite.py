"""The optional LLM query rewrite, wired through the proxy with the emulator as the upstream model.

The emulator is no real model: asked for the strict-JSON query, it answers with the user's first-person
statement ("I am visiting my sister next month."), which is enough to see which query reached the search.
These tests check the wiring (the call, its model and key, the query that reached recall, the fallback),
never that a rewrite improves recall.
"""

from __future__ import annotations

import logging
import uuid

import openai
import pytest

from proxy.client import Memory
from proxy.hooks.rewrite import INSTRUCTIONS

PREVIOUS = "I am visiting my sister next month."
LATEST = "What should I pack for the weather?"
SISTER = "User's sister lives in Porto"
UMBRELLA = "User always packs an umbrella for rainy weather"
REWRITE_MODEL = "rewrite-model"


@pytest.fixture(scope="module")
def proxy(make_proxy):
    # one memory per request, so the block shows which query won; a deadline roomy enough for a busy CI box
    return make_proxy(
        memory_query_rewrite=True,
        memory_top_k=1,
        memory_recall_deadline_ms=1500,
        extract_model=REWRITE_MODEL,
    )


def _ask(proxy, emulator) -> tuple[str, str, list[dict]]:
    """A user with both memories asks LATEST after PREVIOUS: (x-memory-status, the block the upstream got,
    the rewrite calls the upstream saw)."""
    key, user = f"sk-{uuid.uuid4().hex}", f"u-{uuid.uuid4().hex[:8]}"
    with Memory(proxy.url, api_key=key) as memory:
        for text in (SISTER, UMBRELLA):
            memory.user(user).remember(text)
    emulator.clear_requests()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": PREVIOUS},
            {"role": "assistant", "content": "How nice!"},
            {"role": "user", "content": LATEST},
        ],
        user=user,
    )
    raw.parse()
    posts = [r for r in emulator.requests() if r["method"] == "POST" and r["path"].endswith("/chat/completions")]
    rewrites = [r for r in posts if r["body"]["messages"][0]["content"] == INSTRUCTIONS]
    (app_call,) = [r for r in posts if r not in rewrites]
    return raw.headers["x-memory-status"], app_call["body"]["messages"][0]["content"], rewrites


def test_the_rewritten_query_is_what_recall_searches(proxy, emulator, caplog):
    caplog.set_level(logging.DEBUG)
    status, block, rewrites = _ask(proxy, emulator)
    (call,) = rewrites
    assert call["body"]["model"] == REWRITE_MODEL
    assert call["body"]["response_format"]["type"] == "json_schema"
    assert call["headers"]["x-memory"] == "off"
    shown = call["body"]["messages"][1]["content"]
    assert PREVIOUS in shown and LATEST in shown
    # the latest message alone finds the umbrella; the rewritten query ("I am visiting my sister ...") the sister
    assert status == "ok"
    assert SISTER in block and UMBRELLA not in block
    assert PREVIOUS not in caplog.text and LATEST not in caplog.text  # never logged


@pytest.mark.parametrize("fault", [{"status": 500}, {"delay": 1.2}], ids=["upstream-error", "too-slow"])
def test_a_failed_rewrite_recalls_with_the_original_query(proxy, emulator, fault):
    emulator.fault(path="/chat/completions", **fault)  # the first call up is the rewrite
    before = proxy.app.state.runtime.counters.get("query_rewrite_fallback", 0)
    status, block, rewrites = _ask(proxy, emulator)
    assert len(rewrites) == 1
    assert status == "ok"
    assert UMBRELLA in block and SISTER not in block
    assert proxy.app.state.runtime.counters.get("query_rewrite_fallback", 0) == before + 1
