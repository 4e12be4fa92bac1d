"""The tap's SSE parser sees the same events however the bytes are split."""

from __future__ import annotations

import pytest

from proxy.sse import Event, SSEParser

STREAM = (
    b": keepalive\n\n"
    b'event: thread.run.created\ndata: {"id": "run_1"}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"event: done\ndata: [DONE]\n\n"
)
EXPECTED = [
    Event("thread.run.created", '{"id": "run_1"}'),
    Event("message", "line one\nline two"),
    Event("done", "[DONE]"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_events_survive_any_chunking(size: int) -> None:
    parser = SSEParser()
    events = [e for i in range(0, len(STREAM), size) for e in parser.feed(STREAM[i : i + size])]
    assert events == EXPECTED


def test_an_unfinished_event_is_not_reported() -> None:
    assert SSEParser().feed(b"event: x\ndata: partial") == []
