"""What a client may make the proxy hold: header bytes, header time, body silence (README, "Limits").

uvicorn has knobs for idle keep-alive connections, graceful shutdown and concurrency (set in
:func:`proxy.server.server_options`), none for the rest: under it a client could send a 64 MB header
(buffered whole before the app runs, and forwarded) or hold a connection forever with a request it
never finishes (slowloris). Two small guards close that:

- :class:`GuardedHttpTools`, uvicorn's httptools protocol with a deadline on a request's line and
  headers (408, or a silent close for a connection that never sent a byte) and a bound on their
  bytes counted as they arrive (431): a huge header is refused after ``max_header_bytes``, never
  buffered whole.
- :class:`ClientGuard`, pure ASGI: 431 for a single header over ``max_header_field_bytes`` (and for
  the total under a server without the protocol above), 408 when a request body stalls for
  ``body_timeout``, a client that goes away mid-body as one log line (status 499 in the access
  log), never a traceback, and a request still running at the shutdown deadline as a 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.errors import CLIENT_CLOSED, envelope, error_response
from proxy.forward import IDEMPOTENT
from proxy.writes import TurnWrites

log = logging.getLogger("memproxy.limits")

LINGER = 2.0
"""Seconds a refused connection is still read (and discarded) after its answer, so the client can read it."""
LINGER_BYTES = 4 * 1024 * 1024

HEADERS_TOO_LARGE = "Request header fields too large: at most {limit} bytes{what}."
HEADERS_TOO_SLOW = "The request's headers did not arrive within {seconds:g} seconds."
BODY_TOO_SLOW = "The request body stalled: no bytes for {seconds:g} seconds."


def _raw_error(status: int, message: str, code: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI-shaped error body, closing the connection."""
    body = json.dumps(envelope(message, code=code)).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers and a bound on their bytes.

    The deadline runs from the connection's start (a client that connects and sends nothing is
    closed), and on a kept-alive connection from the first byte of the next request (uvicorn's
    keep-alive timeout covers the silence before it), to the end of the headers. Bytes are counted
    as they arrive while a request's headers are incomplete. Configure with :func:`protocol_class`.
    """

    max_header_bytes = 65536
    header_timeout = 10.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_bytes = 0
        self.header_timer: asyncio.TimerHandle | None = None
        self.awaiting_headers = True  # the next bytes belong to a request's line or headers
        self.request_begun = False  # a byte of the current request has arrived
        self.headers_done_in_feed = False
        self.discarding = 0  # refused: bytes read and dropped since, or 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        # the flow control keeps the socket's own transport; every write of the protocol and its
        # request cycles goes through one TurnWrites, so their bytes keep their order
        self.transport = TurnWrites(self.transport, self.loop)  # type: ignore[assignment]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            self.discarding += len(data)
            if self.discarding > LINGER_BYTES:
                self.transport.close()
            return
        in_headers = self.awaiting_headers  # this chunk starts within a request's line or headers
        if in_headers and self.header_timer is None:
            self._arm_header_timer()
        self.headers_done_in_feed = False
        super().data_received(data)
        if self.transport.is_closing() or not self.awaiting_headers:
            return
        if self.request_begun and self.header_timer is None:
            self._arm_header_timer()  # a (pipelined) request began in the chunk that ended the previous one
        if in_headers and not self.headers_done_in_feed:
            # Only chunks wholly inside headers count (one that ended a body or headers is left out:
            # the count stays a lower bound, never charging a body's bytes to headers).
            self.header_bytes += len(data)
            if self.header_bytes > self.max_header_bytes:
                log.info("request headers over %d bytes: 431, connection closed", self.max_header_bytes)
                message = HEADERS_TOO_LARGE.format(limit=self.max_header_bytes, what="")
                self._refuse(431, message, "request_header_fields_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request_begun = True

    def on_headers_complete(self) -> None:
        self.awaiting_headers = self.request_begun = False
        self.headers_done_in_feed = True
        self.header_bytes = 0
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_headers = True

    def _arm_header_timer(self) -> None:
        if self.header_timeout > 0:
            self.header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_timed_out(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if not (self.request_begun or self.header_bytes):
            log.debug("connection idle for %g s before its first request: closed", self.header_timeout)
            self.transport.close()
            return
        log.info("request headers incomplete after %g s: 408, connection closed", self.header_timeout)
        self._refuse(408, HEADERS_TOO_SLOW.format(seconds=self.header_timeout), "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` (unless another response is under way), then close after a short linger."""
        self._disarm_header_timer()
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an earlier (pipelined) response is being written: no room for ours
            return
        self.transport.write(_raw_error(status, message, code, self.server_state.default_headers))
        # Closing while the client still sends would reset the connection and could destroy the
        # answer before the client reads it: half-close, drop what still comes for a moment, close.
        self.discarding = 1
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER, self.transport.close)


def protocol_class(max_header_bytes: int, header_timeout: float) -> type[GuardedHttpTools]:
    """:class:`GuardedHttpTools` with these limits, for uvicorn's ``http`` option."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpTools,),
        {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout},
    )


class _Body:
    """The request's ``receive``, with a deadline on each body message until the body is complete."""

    __slots__ = ("done", "receive_", "received", "timed_out", "timeout")

    def __init__(self, receive: Receive, timeout: float | None) -> None:
        self.receive_ = receive
        self.timeout = timeout
        self.done = timeout is None
        self.timed_out = False
        self.received = 0

    async def receive(self) -> Message:
        if self.done:
            return await self.receive_()
        try:
            async with asyncio.timeout(self.timeout):
                message = await self.receive_()
        except TimeoutError:
            self.timed_out = self.done = True
            return {"type": "http.disconnect"}  # the app stops as for a client gone; the guard answers 408
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message


class ClientGuard:
    """Pure ASGI: header sizes (431), body silence (408), a client gone mid-body (499, one log line),
    a request cancelled by the server's shutdown deadline (503)."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int, max_field_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_field_bytes = max_field_bytes
        self.body_timeout = body_timeout if body_timeout > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        total, has_body = 0, False
        for name, value in scope["headers"]:
            size = len(name) + len(value)
            if size > self.max_field_bytes:
                what = f" per header ({name.decode('latin-1')!r} has {size})"
                await self._refuse(
                    scope, receive, send, HEADERS_TOO_LARGE.format(limit=self.max_field_bytes, what=what)
                )
                return
            total += size
            if name == b"content-length":
                has_body = value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if total > self.max_header_bytes:
            what = f" in all ({total})"
            await self._refuse(scope, receive, send, HEADERS_TOO_LARGE.format(limit=self.max_header_bytes, what=what))
            return
        body = _Body(receive, self.body_timeout if has_body else None)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.timed_out:
                return  # the client gets the 408 below instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except ClientDisconnect:
            if not body.timed_out:
                log.info("client closed the connection while sending the request body (%d bytes in)", body.received)
                if not started:  # nobody reads it; it tells the access log and the metrics what happened
                    await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
                    await send({"type": "http.response.body", "body": b""})
                return
        except asyncio.CancelledError:
            # Only the server cancels a request's task: its graceful shutdown deadline has passed.
            # Answered here, the client learns why, and the server logs no traceback per request.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.info("shutdown deadline passed: request cancelled%s", "" if started else ", 503")
            if not started:
                retry = scope["method"] in IDEMPOTENT  # a POST may have reached the upstream already
                message = "The proxy is shutting down; the request was cancelled."
                response = error_response(
                    503,
                    message,
                    type="server_error",
                    code="shutting_down",
                    should_retry=retry,
                    headers={"connection": "close"},
                )
                await response(scope, receive, send)
            return
        if body.timed_out and not started:
            log.info(
                "request body stalled for %g s (%d bytes in): 408, connection closed", self.body_timeout, body.received
            )
            message = BODY_TOO_SLOW.format(seconds=self.body_timeout)
            response = error_response(408, message, code="request_timeout", headers={"connection": "close"})
            await response(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        log.info("request headers too large: 431")
        response = error_response(431, message, code="request_header_fields_too_large", headers={"connection": "close"})
        await response(scope, receive, send)
