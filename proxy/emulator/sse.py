"""Server-sent events as OpenAI sends them.

Chat Completions sends ``data:`` lines only and ends with ``data: [DONE]``; Responses names each
event (``event: response.created``). Each event is yielded as its own body chunk, so the fault
middleware can delay or cut a stream between events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from starlette.responses import StreamingResponse

DONE = b"data: [DONE]\n\n"


def encode_event(data: Any, event: str | None = None) -> bytes:
    """One SSE event: optional ``event:`` line, one ``data:`` line of compact JSON, blank line."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def sse_response(events: Iterable[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    """A ``text/event-stream`` response that sends each encoded event as one chunk."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in events:
            yield chunk

    base = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream; charset=utf-8", headers={**base, **(headers or {})})
