"""ASGI middleware: records ``/v1`` requests, applies faults, adds OpenAI's response headers.

It works on raw ASGI messages rather than Starlette responses because faults act on the wire:
delays between body chunks, a connection closed after N chunks or bytes, a gzip-encoded body.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.emulator.control import FAULT_HEADER, Fault, fault_from_header
from proxy.emulator.ids import new_id
from proxy.errors import OpenAIError, error_response, openai_error_handler

log = logging.getLogger("memproxy.emulator")

SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "10000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "9999000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "0s",
}


class _Dropped(Exception):
    """Raised inside ``send`` to stop the app once a ``drop_after`` fault has cut the response.

    Deliberately not a :class:`~proxy.errors.MemproxyError`: it is control flow, caught only by
    :class:`EmulatorMiddleware` to end the connection, and nothing may answer it as an error.
    """


class EmulatorMiddleware:
    """Wraps the emulator's routes; state comes from ``scope["app"].state.emulator``."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.emulator
        request_id = new_id("request")
        shaper = _ResponseShaper(send, request_id)
        fault: Fault | None = None
        if scope["path"] == "/v1" or scope["path"].startswith("/v1/"):
            body, receive = await _buffer_body(receive)
            try:
                fault = _choose_fault(scope, state)
            except OpenAIError as exc:
                state.recorder.record(scope, body, request_id, None)
                response = await openai_error_handler(Request(scope, receive), exc)
                await response(scope, receive, shaper.send)
                return
            state.recorder.record(scope, body, request_id, fault)
        shaper.fault = fault
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        app = JSONResponse(fault.error_body(), status_code=fault.status) if fault and fault.status else self.app
        try:
            await app(scope, receive, shaper.send)
        except _Dropped:
            return  # the server closes the connection: the response never completed
        except BaseExceptionGroup as group:  # a task group may wrap it
            if not group.subgroup(_Dropped) or group.subgroup(lambda e: not isinstance(e, _Dropped)):
                raise
        except Exception:
            if shaper.started_response:
                raise
            log.exception("emulator failed on %s %s", scope["method"], scope["path"])
            await error_response(500, SERVER_ERROR, type="server_error")(scope, receive, shaper.send)


def _choose_fault(scope: dict[str, Any], state: Any) -> Fault | None:
    """The ``x-emulator-fault`` header's fault, else the first matching registered one."""
    for name, value in scope.get("headers", []):
        if name.decode("latin-1").lower() == FAULT_HEADER:
            return fault_from_header(value.decode("latin-1"))
    return state.faults.take(scope["method"], scope["path"])


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body, and a ``receive`` that replays it to the app."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


class _ResponseShaper:
    """Wraps ``send``: standard headers, then the fault's headers, gzip, delays and drops."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self.request_id = request_id
        self.fault: Fault | None = None
        self.started = time.monotonic()
        self.started_response = False
        self._streaming = False
        self._chunks = 0
        self._bytes = 0
        self._gzip: Any = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started_response = True
            await self._send(self._start(message))
        elif message["type"] == "http.response.body":
            await self._body(message)
        else:
            await self._send(message)

    def _start(self, message: Message) -> Message:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        self._streaming = headers.get("content-type", "").startswith("text/event-stream")
        extra = {
            "x-request-id": self.request_id,
            "openai-processing-ms": str(int((time.monotonic() - self.started) * 1000)),
            "openai-version": "2020-10-01",
            **RATE_LIMIT_HEADERS,
        }
        headers = {**extra, **headers}
        if self.fault:
            headers.update(self.fault.headers)
            if self.fault.gzip:
                self._gzip = zlib.compressobj(wbits=31)
                headers.pop("content-length", None)
                headers["content-encoding"] = "gzip"
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return {**message, "headers": raw}

    async def _body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        fault = self.fault
        if fault and body:
            if fault.event_delay and self._chunks:
                await asyncio.sleep(fault.event_delay)
            self._chunks += 1
            if fault.drop_after is not None:
                body, more = await self._maybe_drop(body, more, fault.drop_after)
        if self._gzip is not None:
            body = self._gzip.compress(body) + (self._gzip.flush(zlib.Z_SYNC_FLUSH) if more else self._gzip.flush())
        await self._send({**message, "body": body, "more_body": more})

    async def _maybe_drop(self, body: bytes, more: bool, limit: int) -> tuple[bytes, bool]:
        """Cut the response after ``limit`` chunks (SSE) or bytes (anything else)."""
        if self._streaming:
            if self._chunks > limit:
                raise _Dropped
            return body, more
        room = limit - self._bytes
        self._bytes += len(body)
        if room >= len(body):
            return body, more
        if room > 0:
            partial = body[:room]
            if self._gzip is not None:
                partial = self._gzip.compress(partial) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
            await self._send({"type": "http.response.body", "body": partial, "more_body": True})
        raise _Dropped
