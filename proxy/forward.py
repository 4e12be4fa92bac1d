"""Transparent pass-through to the upstream: raw bytes both ways, streamed, through one client.

Everything a hook does not need to read is relayed untouched: the request body streams up as it
arrives, the response streams down as the upstream sends it, still in its content encoding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from urllib.parse import unquote_to_bytes

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.config import Settings
from proxy.errors import error_response

log = logging.getLogger("memproxy.forward")

# RFC 9110 7.6.1 connection-specific fields, plus the proxy-* family; never relayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
KEEPALIVE = b": keepalive\n\n"


def make_client(settings: Settings) -> httpx.AsyncClient:
    """The one upstream client: no read timeout by default, because SSE streams may idle."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )
    limits = httpx.Limits(max_connections=settings.max_connections, max_keepalive_connections=256)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False)


def filter_headers(raw: Iterable[tuple[bytes, bytes]], drop: Iterable[str] = ()) -> list[tuple[bytes, bytes]]:
    """Remove hop-by-hop fields, the ones the Connection field names, and ``drop``."""
    raw = list(raw)
    named = {
        token.strip().lower()
        for key, value in raw
        if key.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    excluded = HOP_BY_HOP | named | {name.lower() for name in drop}
    return [(key, value) for key, value in raw if key.decode("latin-1").lower() not in excluded]


def safe_suffix(raw_path: bytes) -> bytes | None:
    """The path below ``/v1``, or None when it could escape the upstream base.

    Rejects dot segments, encoded slashes or backslashes, empty inner segments (``//host``,
    ``http://...``) and control characters, checked on the decoded form of each segment.
    """
    if not raw_path.startswith(b"/v1/") and raw_path != b"/v1":
        return None
    suffix = raw_path[3:]
    segments = suffix.split(b"/")[1:]
    for index, segment in enumerate(segments):
        decoded = unquote_to_bytes(segment)
        if segment == b"" and index != len(segments) - 1:
            return None
        if decoded in (b".", b"..") or b"/" in decoded or b"\\" in decoded:
            return None
        if any(byte < 0x21 or byte == 0x7F for byte in decoded):
            return None
    return suffix


class Forwarder:
    """Sends a client request upstream and relays the answer; shared by the app and the hooks."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client = client
        self.base = httpx.URL(settings.upstream_url)
        self.keepalive_interval = settings.keepalive_interval

    def target(self, request: Request) -> httpx.URL | None:
        suffix = safe_suffix(request.scope.get("raw_path") or request.url.path.encode())
        if suffix is None:
            return None
        raw = self.base.raw_path.split(b"?")[0].rstrip(b"/") + suffix
        query = request.scope.get("query_string", b"")
        return self.base.copy_with(raw_path=raw + (b"?" + query if query else b""))

    async def forward(self, request: Request, body: bytes | None = None) -> Response:
        """Relay ``request`` upstream; ``body`` replaces the client's body when a hook rewrote it."""
        url = self.target(request)
        if url is None:
            return error_response(400, f"Invalid path: {request.url.path!r}", code="invalid_path")
        headers = filter_headers(request.headers.raw, drop=("host", "x-memory", "x-memory-user"))
        if body is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            content: bytes | AsyncIterator[bytes] | None = body
        else:
            content = _client_body(request)
        try:
            upstream = await self.send(request.method, url, headers, content)
        except httpx.HTTPError as exc:
            return upstream_error(exc, request.method)
        return UpstreamResponse(upstream, self.keepalive_interval)

    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
    ) -> httpx.Response:
        upstream_request = self.client.build_request(method, url, headers=headers, content=content)
        return await self.client.send(upstream_request, stream=True)


def _client_body(request: Request) -> AsyncIterator[bytes] | None:
    """Stream the client's body up as it arrives; no body at all when the client sent none."""
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    if not has_body or request.headers.get("content-length") == "0":
        return None
    return request.stream()


def upstream_error(exc: httpx.HTTPError, method: str) -> Response:
    """Map a transport failure to 502/503/504.

    ``x-should-retry`` is true only where the upstream cannot have acted on the request: the
    connection never opened, or the method is idempotent. A POST that timed out mid-flight may
    have created a run upstream, and a blind retry would create a second one.
    """
    never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    retry = never_sent or method.upper() in IDEMPOTENT
    if isinstance(exc, httpx.PoolTimeout):
        status, code, message = 503, "upstream_busy", "No upstream connection was free in time."
    elif isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        status, code, message = 502, "upstream_unreachable", "The upstream API could not be reached."
    elif isinstance(exc, httpx.TimeoutException):
        status, code, message = 504, "upstream_timeout", "The upstream API did not answer in time."
    else:
        status, code, message = 502, "upstream_error", "The upstream API closed the connection."
    log.warning("upstream %s: %s", code, type(exc).__name__)
    return error_response(status, message, type="upstream_error", code=code, should_retry=retry)


def response_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    headers = filter_headers(upstream.headers.raw)
    if is_event_stream(upstream):
        # Ask nginx / ingress controllers not to buffer or cache a live stream.
        headers = [(k, v) for k, v in headers if k.lower() not in (b"cache-control", b"x-accel-buffering")]
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    return headers


def is_event_stream(upstream: httpx.Response) -> bool:
    return upstream.headers.get("content-type", "").startswith("text/event-stream")


async def with_keepalive(chunks: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Yield ``chunks``, plus an SSE comment whenever the upstream is silent for ``interval``.

    The comment only goes out between two events, never inside one, so a client parser never
    sees a torn event. The pending read is kept across timeouts rather than cancelled.
    """
    at_boundary = True
    pending: asyncio.Task[bytes] | None = None
    iterator = aiter(chunks)
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                if at_boundary:
                    yield KEEPALIVE
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            if chunk:
                at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
                yield chunk
    finally:
        if pending is not None:
            pending.cancel()


class UpstreamResponse(Response):
    """Streams an upstream response to the client and always releases the upstream connection.

    It watches the client side too: when the client goes away the upstream stream is closed at
    once, not at the next write, so an abandoned SSE stream stops consuming upstream tokens.
    """

    def __init__(self, upstream: httpx.Response, keepalive_interval: float) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.raw_headers = response_headers(upstream)
        self.background = None
        chunks = upstream.aiter_raw()
        identity = upstream.headers.get("content-encoding", "identity") == "identity"
        if is_event_stream(upstream) and identity and keepalive_interval > 0:
            chunks = with_keepalive(chunks, keepalive_interval)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
                await self._relay(send)
                group.cancel_scope.cancel()
        finally:
            await self.upstream.aclose()


    async def _relay(self, send: Send) -> None:
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            # Headers are gone already: ending without the last chunk makes the server drop the
            # connection, so the client sees a truncated body instead of a clean, wrong one.
            log.warning("upstream stream broke: %s", type(exc).__name__)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
