"""The upstream client's sockets on asyncio transports: httpcore2's network backend, without anyio.

httpx2 reaches the network through httpcore2, whose default backend wraps every read and write in
anyio's cancel scopes and asks each idle pooled connection, on every request, whether its socket is
readable (a ``poll`` per connection). For a proxy that is most of the upstream client's cost: a
profile of forwarded chat completions at concurrency 64 spent a quarter of the process's CPU in anyio
alone. :class:`AsyncioBackend` implements httpcore2's public ``AsyncNetworkBackend`` interface on the
running loop's transports (uvloop's under ``memproxy serve``):

- a read returns what the protocol already holds, or waits on one future (a timer only when the
  read has a timeout);
- the writes of one event-loop turn (a request's head, then its body) leave in one system call; a
  write waits only when the transport's buffer is over the high-water mark (flow control, with the
  write timeout);
- "is this idle connection readable" is the protocol's own state (data or end of stream seen), no
  system call;
- the receive side is bounded: past :data:`READ_HIGH` bytes not yet read the transport stops reading
  until the caller catches up, so a fast upstream and a slow client never pile a stream up in memory.

Everything else (pooling, HTTP/1.1, timeouts per phase, TLS through ``loop.start_tls``) stays httpx2's
and httpcore2's. No library offered this backend (httpcore2 ships anyio and trio ones), so it is ours.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore2
import httpx2
from httpcore2 import AsyncNetworkBackend, AsyncNetworkStream

from proxy.writes import TurnWrites

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]

HOLD_MAX = 64 * 1024
"""A write this large is sent at once; smaller ones are held to the end of the event-loop turn."""
READ_HIGH = 256 * 1024
"""Bytes received and not yet read at which the transport stops reading."""
READ_LOW = 64 * 1024
"""Bytes left unread at which it reads again."""


class _Protocol(asyncio.Protocol):
    """Bytes the transport received, end of stream, and write flow control, with one waiter each."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.reader: asyncio.Future[None] | None = None
        self.drainer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_HIGH and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        _release(self.reader)

    def eof_received(self) -> bool:
        self.eof = True
        _release(self.reader)
        return False  # close the transport: HTTP/1.1 has nothing to send after the peer's end

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _release(self.reader)
        _release(self.drainer)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _release(self.drainer)

    @property
    def readable(self) -> bool:
        """A read would not wait: data is buffered, or the peer ended (the pool's "server disconnected")."""
        return bool(self.chunks) or self.eof

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self.chunks.appendleft(rest)
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= READ_LOW and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk


def _release(waiter: asyncio.Future[None] | None) -> None:
    """Let whoever awaits ``waiter`` (if anyone still does) go on."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _wait(waiter: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
    """Await ``waiter``; past ``timeout`` seconds raise ``error`` (one timer, none without a timeout)."""
    if timeout is None:
        await waiter
        return
    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout, _expire, waiter, error)
    try:
        await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[None], error: type[Exception]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out"))


class AsyncioStream(AsyncNetworkStream):
    """One connection: reads and writes on an asyncio transport through :class:`_Protocol`."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        # a request's head and body, written one after the other, leave together (one system call)
        self._writes = TurnWrites(transport, asyncio.get_running_loop())

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        self._writes.flush()
        if not protocol.chunks and not protocol.eof:
            protocol.reader = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.reader, timeout, httpcore2.ReadTimeout)
            finally:
                protocol.reader = None
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if (protocol.eof and protocol.error is not None) or self._transport.is_closing():
            raise httpcore2.WriteError(str(protocol.error or "connection closed"))
        self._writes.write(buffer)
        if len(buffer) >= HOLD_MAX:
            self._writes.flush()
        if protocol.writing_paused:
            protocol.drainer = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.drainer, timeout, httpcore2.WriteTimeout)
            finally:
                protocol.drainer = None
            if protocol.error is not None:
                raise httpcore2.WriteError(str(protocol.error))

    async def aclose(self) -> None:
        self._writes.close()  # what this turn wrote goes first

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport,
                self._protocol,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore2.ConnectTimeout(str(exc) or "TLS handshake timed out") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore2.ConnectError(str(exc)) from exc
        if transport is None:  # the peer closed during the handshake
            raise httpcore2.ConnectError("connection closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._protocol.readable
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore2's network backend on the running asyncio loop's transports (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(_Protocol, host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        return _stream(transport, protocol, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_Protocol, path)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"connecting to {path} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        return _stream(transport, protocol, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _stream(
    transport: asyncio.BaseTransport, protocol: _Protocol, socket_options: Iterable[SocketOption] | None
) -> AsyncioStream:
    sock: socket.socket | None = transport.get_extra_info("socket")
    for option in socket_options or ():
        if sock is not None:
            sock.setsockopt(*option)
    return AsyncioStream(cast(asyncio.Transport, transport), protocol)


def declare_asyncio_thread() -> None:
    """Tell sniffio, once, that the calling thread runs asyncio.

    httpcore2 and anyio ask sniffio which library runs on every lock, event and cancel scope they
    make (several per upstream call), and sniffio finds out by calling ``asyncio.current_task()``
    each time: 7% of a forwarding process's CPU at concurrency 64. ``sniffio.thread_local`` is its
    documented way for a loop's owner to say it; only the calling thread is concerned.
    """
    try:
        import sniffio
    except ImportError:  # pragma: no cover - a dependency of anyio, which httpx2 needs
        return
    sniffio.thread_local.name = "asyncio"


class AsyncioTransport(httpx2.AsyncHTTPTransport):
    """httpx2's HTTP transport (its request and response mapping, its errors) over a connection pool
    whose connections use :class:`AsyncioBackend`.

    httpx2 builds its pool with httpcore2's default backend and takes no backend of its own, so this
    transport replaces the pool it built with an identical one (same TLS context, same limits) on
    ours; ``tests/test_netio.py`` holds it to that. ``ca_file``: the CAs the upstream's certificate
    must chain to (PEM), else the public ones.
    """

    def __init__(self, limits: httpx2.Limits, ca_file: str | None = None) -> None:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else httpx2.create_ssl_context(trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )
