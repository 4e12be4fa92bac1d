"""Under overload the proxy sheds recalls instead of queueing them past their deadline.

A burst of chat completions, each a different question, reaches a proxy whose recall deadline is
far shorter than the burst's embedding work: the queries that would wait past it are not embedded
at all, their requests go upstream at once without memory (``x-memory-status: degraded``, counted
as ``recall_overloaded``), every answer arrives intact, and the log gets a line per second, not one
per shed request.
"""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import openai
import pytest

BURST = 96


def shed_count(proxy) -> float:
    text = httpx.get(proxy.url + "/metrics").text
    found = re.search(r'^memproxy_degraded_total\{cause="recall_overloaded"\} ([\d.]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_burst_past_the_recall_deadline_is_shed_at_once_and_every_answer_arrives(
    make_proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy(memory_recall_deadline_ms=40)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST))
    # Connections opened first, so the burst reaches the proxy within a few milliseconds: a second
    # or more of embedding asked at once, against a deadline of 40 ms.
    await asyncio.gather(*(http.get(proxy.url + "/healthz") for _ in range(BURST)))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-overload", max_retries=0, http_client=http)
    embedder = proxy.app.state.runtime.memory.embedder

    async def ask(i: int) -> tuple[str, str, str]:
        # a long question: each one costs the model ~10 ms or more, so the burst is far past the deadline
        question = f"question {i}: " + " ".join(
            f"what did I say about boat {i * 7919 + k} and harbour {k}?" for k in range(40)
        )
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": question}], user=f"user-{i}"
        )
        return question, raw.headers["x-memory-status"], raw.parse().choices[0].message.content or ""

    for i in range(BURST, BURST + 3):  # one at a time: the embedder learns what such a question costs
        await ask(i)
    runs_before = embedder.batched_queries
    with caplog.at_level(logging.WARNING, logger="memproxy"):
        answers = await asyncio.gather(*(ask(i) for i in range(BURST)))
    await client.close()
    await http.aclose()

    for question, _, content in answers:
        assert question in content  # the emulator echoes it: the call went through whole
    statuses = [status for _, status, _ in answers]
    shed = shed_count(proxy)
    assert shed >= BURST // 4, statuses  # a good part of the burst never waited for the model
    assert statuses.count("degraded") >= shed
    assert embedder.batched_queries - runs_before <= BURST - shed  # a shed query is never embedded
    lines = [r for r in caplog.records if "recall_overloaded" in r.getMessage()]
    assert 1 <= len(lines) < shed  # one line per second at most, with the count of the others
