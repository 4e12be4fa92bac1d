"""Transparent pass-through to the upstream: raw bytes both ways, streamed, through one client.

Everything a hook does not need to read is relayed untouched: the request body streams up as it
arrives, the response streams down as the upstream sends it, still in its content encoding.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import anyio
import httpx2
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy import tracing
from proxy.config import Settings
from proxy.errors import CLIENT_CLOSED, error_response
from proxy.netio import AsyncioTransport
from proxy.observe import NOOP, Observer

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
HOP_BY_HOP_RAW = frozenset(name.encode() for name in HOP_BY_HOP)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
KEEPALIVE = b": keepalive\n\n"
PRIVATE_PREFIX = b"x-memory"
"""The proxy's own request headers (``X-Memory``, ``X-Memory-User``, ``X-Memory-Tenant``, any ``X-Memory*``)."""


def make_transport(settings: Settings) -> httpx2.AsyncHTTPTransport:
    """The upstream connection pool, shared by the one client and the forwarder (which sends through it
    directly: a relay needs none of the client's auth, redirect, cookie and hook layers)."""
    limits = httpx2.Limits(max_connections=settings.max_connections, max_keepalive_connections=256)
    return AsyncioTransport(limits, str(settings.upstream_ca_file) if settings.upstream_ca_file else None)


def make_client(settings: Settings, transport: httpx2.AsyncBaseTransport) -> httpx2.AsyncClient:
    """The one upstream client, over ``transport``: no read timeout by default, because SSE streams may idle."""
    timeout = httpx2.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )
    # Every tenant's calls share this client: it must keep no cookie an upstream sets for one of them.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx2.AsyncClient(
        timeout=timeout, transport=transport, follow_redirects=False, trust_env=False, cookies=no_cookies
    )


def filter_headers(raw: Iterable[tuple[bytes, bytes]], drop: Iterable[str] = ()) -> list[tuple[bytes, bytes]]:
    """Remove hop-by-hop fields, the ones the Connection field names, and ``drop``."""
    raw = list(raw)
    named = {token.strip().lower() for key, value in raw if key.lower() == b"connection" for token in value.split(b",")}
    excluded = HOP_BY_HOP_RAW | named | {name.lower().encode("latin-1") for name in drop}
    return [(key, value) for key, value in raw if key.lower() not in excluded]


def upstream_headers(raw: Iterable[tuple[bytes, bytes]], drop: Iterable[str] = ()) -> list[tuple[bytes, bytes]]:
    """A client's request headers as they go upstream.

    :func:`filter_headers`, without the proxy's own ``X-Memory*`` headers, and each value without
    the whitespace around it, which is no part of a field value (RFC 9110 5.5) and which the
    upstream client refuses to send: ``Authorization: Bearer `` goes up as ``Bearer``, for the
    upstream to judge.
    """
    return [
        (key, value.strip(b" \t"))
        for key, value in filter_headers(raw, drop)
        if not key.lower().startswith(PRIVATE_PREFIX)
    ]


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


class Tap(Protocol):
    """Reads a copy of a response as it goes by; it never alters what the client gets, and delays only the
    end of a complete answer, by its ``finish`` and at most the capture deadline (:class:`UpstreamResponse`)."""

    def feed(self, chunk: bytes) -> None: ...

    async def finish(self, status: int, complete: bool) -> None: ...


class Forwarder:
    """Sends a client request upstream and relays the answer; shared by the app and the hooks."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        transport: httpx2.AsyncBaseTransport,
        settings: Settings,
        observer: Observer = NOOP,
    ) -> None:
        self.client = client
        # The shared client's pool (make_transport): forwarding builds its requests with the client (its
        # timeouts) and sends them through the pool directly, without the client's auth, redirect,
        # cookie and hook layers, none of which a relay uses (no redirect followed, no cookie kept).
        self.transport = transport
        self.observer = observer
        self.base = httpx2.URL(settings.upstream_url)
        # a path's upstream URL, checked and parsed once (the same few paths come again and again)
        self._path_target = functools.lru_cache(maxsize=1024)(self._target)
        self.keepalive_interval = settings.keepalive_interval
        # never sent upstream, nor is any X-Memory* header
        self.private_headers: tuple[str, ...] = ("host", settings.memory_user_header)
        self.capture_deadline = settings.memory_capture_deadline_ms / 1000
        self.tasks: set[asyncio.Task[Any]] = set()
        self.open_responses = 0  # upstream responses not yet released: a gauge, and a leak detector
        self.waiting = 0  # requests sent upstream and not answered yet (no response headers)
        self.captures_late = 0  # answers that ended before their tap finished (capture deadline passed)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a tap's finish as its own task: a response that stops waiting for it never cancels it."""
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def target(self, request: Request) -> httpx2.URL | None:
        """The upstream URL of ``request``, or None for a path that could escape the upstream base."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        if query:  # never kept: a query may carry what no cache should hold
            return self._target(raw_path, query)
        return self._path_target(raw_path)

    def _target(self, raw_path: bytes, query: bytes = b"") -> httpx2.URL | None:
        suffix = safe_suffix(raw_path)
        if suffix is None:
            return None
        raw = self.base.raw_path.split(b"?")[0].rstrip(b"/") + suffix
        return self.base.copy_with(raw_path=raw + (b"?" + query if query else b""))

    async def forward(
        self,
        request: Request,
        body: bytes | None = None,
        *,
        tap: Tap | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Relay ``request`` upstream.

        ``body`` replaces the client's body when a hook rewrote it; ``tap`` reads the response
        (asked for without content encoding, so it can be parsed); ``headers`` are added to
        whatever the client gets, error responses included.
        """
        extra = headers or {}
        url = self.target(request)
        if url is None:
            return error_response(400, f"Invalid path: {request.url.path!r}", code="invalid_path", headers=extra)
        drop = (*self.private_headers, "accept-encoding") if tap else self.private_headers
        headers_up = upstream_headers(request.headers.raw, drop=drop)
        if tap:
            headers_up.append((b"accept-encoding", b"identity"))
        uploaded: asyncio.Event | None = None
        if body is not None:
            headers_up = [(k, v) for k, v in headers_up if k.lower() != b"content-length"]
            content: bytes | AsyncIterator[bytes] | None = body
        elif _small_body(request):
            content = await request.body()  # the bytes a hook read already, or a small body read whole
        elif _has_body(request):
            uploaded = asyncio.Event()
            content = _upload(request, uploaded)
        else:
            content = None
        try:
            upstream = await self.send_unless_gone(request, url, headers_up, content, uploaded)
        except httpx2.HTTPError as exc:
            response = upstream_error(exc, request.method)
            response.headers.update(extra)
            return response
        if upstream is None:
            log.info("client went away before the upstream answered: upstream request cancelled")
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it: it tells the access log and metrics
        self.open_responses += 1
        return UpstreamResponse(upstream, self.keepalive_interval, tap=tap, headers=extra, forwarder=self)

    async def send_unless_gone(
        self,
        request: Request,
        url: httpx2.URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
        uploaded: asyncio.Event | None,
    ) -> httpx2.Response | None:
        """:meth:`send`, cancelled the moment the client goes away: None then.

        Cancelling closes the upstream connection, so the upstream stops working (and billing) on a
        call nobody will read. The client is watched once its body has gone up (``uploaded``; at
        once without one); while the body still streams up, a client gone ends the upload itself
        (``ClientDisconnect``, raised through here to :class:`proxy.limits.ClientGuard`).
        """
        upstream: httpx2.Response | None = None
        self.waiting += 1
        try:
            with anyio.CancelScope() as scope:
                watcher = asyncio.ensure_future(_cancel_on_disconnect(request.receive, scope, uploaded))
                try:
                    upstream = await self.send(request.method, url, headers, content)
                finally:
                    watcher.cancel()
        finally:
            self.waiting -= 1
        return upstream

    async def send(
        self,
        method: str,
        url: httpx2.URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
    ) -> httpx2.Response:
        """Returns at the upstream's response headers: the time taken is the upstream latency."""
        started = time.perf_counter()
        try:
            with tracing.span("memproxy.upstream", {"http.request.method": method}, client=True):  # no-op untraced
                headers = tracing.propagate(headers)  # W3C traceparent of this span, while tracing
                upstream_request = self.client.build_request(method, url, headers=headers, content=content)
                return await self.transport.handle_async_request(upstream_request)
        finally:
            self.observer.upstream(time.perf_counter() - started)

    async def fetch_json(self, request: Request, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``path`` (below the base) as the client, for a hook that needs one upstream fact.

        Only the credential and the OpenAI routing headers are sent. Any failure is None: a hook
        that cannot learn something goes on without it.
        """
        headers = {name: value.strip(" \t") for name, value in request.headers.items() if name in FETCH_HEADERS}
        url = self.base.copy_with(raw_path=self.base.raw_path.rstrip(b"/") + path.encode())
        try:
            response = await self.client.get(url, params=params, headers=headers)
            return response.json() if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError):
            return None


FETCH_HEADERS = frozenset({"authorization", "api-key", "openai-organization", "openai-project", "openai-beta"})


SMALL_BODY = 64 * 1024
"""Bytes up to which a body with a ``Content-Length`` is read whole and sent up as bytes, not streamed."""


def _small_body(request: Request) -> bool:
    """Whether the client declared a body of 1 to :data:`SMALL_BODY` bytes (not chunked).

    Sent as bytes, it goes up without a stream to drain: the upstream client writes it in one piece.
    """
    headers = request.headers
    length = headers.get("content-length", "")
    return "transfer-encoding" not in headers and length.isdigit() and 0 < int(length) <= SMALL_BODY


def _has_body(request: Request) -> bool:
    """Whether the client sends a body (none at all when it sent no length or an empty one)."""
    headers = request.headers
    if "transfer-encoding" in headers:
        return True
    return headers.get("content-length", "0") != "0"


async def _upload(request: Request, uploaded: asyncio.Event) -> AsyncIterator[bytes]:
    """The client's body as it arrives; ``uploaded`` is set once all of it has gone up."""
    async for chunk in request.stream():
        yield chunk
    uploaded.set()


def upstream_error(exc: httpx2.HTTPError, method: str) -> Response:
    """Map a transport failure to 502/503/504.

    ``x-should-retry`` is true only where the upstream cannot have acted on the request: the
    connection never opened, or the method is idempotent. A POST that timed out mid-flight may
    have created a run upstream, and a blind retry would create a second one.
    """
    if isinstance(exc, httpx2.LocalProtocolError):
        # Raised before a byte went out: the client's request carries what no HTTP message may (a
        # control character in a header value, say). The client's error, never the upstream's.
        log.info("request refused before sending: %s", type(exc).__name__)
        message = "The request could not be sent upstream: a header or the target is malformed."
        return error_response(400, message, code="invalid_request", should_retry=False)
    never_sent = isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout))
    retry = never_sent or method.upper() in IDEMPOTENT
    if isinstance(exc, httpx2.PoolTimeout):
        status, code, message = 503, "upstream_busy", "No upstream connection was free in time."
    elif isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        status, code, message = 502, "upstream_unreachable", "The upstream API could not be reached."
    elif isinstance(exc, httpx2.TimeoutException):
        status, code, message = 504, "upstream_timeout", "The upstream API did not answer in time."
    else:
        status, code, message = 502, "upstream_error", "The upstream API closed the connection."
    log.warning("upstream %s: %s", code, type(exc).__name__)
    return error_response(status, message, type="upstream_error", code=code, should_retry=retry)


def response_headers(upstream: httpx2.Response, streaming: bool) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the client gets them (``streaming``: an event stream)."""
    headers = filter_headers(upstream.headers.raw)
    if streaming:
        # Ask nginx / ingress controllers not to buffer or cache a live stream.
        headers = [(k, v) for k, v in headers if k.lower() not in (b"cache-control", b"x-accel-buffering")]
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    return headers


def is_event_stream(upstream: httpx2.Response) -> bool:
    return upstream.headers.get("content-type", "").startswith("text/event-stream")


class UpstreamResponse(Response):
    """Streams an upstream response to the client and always releases the upstream connection.

    On an event stream two helpers run beside the relay: one closes the upstream the moment the
    client goes away (not at the next write, so an abandoned stream stops costing tokens), one
    writes a ``: keepalive`` comment when the upstream has been silent for a while, only between
    two events so a client parser never sees a torn one. A plain body needs neither.

    With a tap, the end of a complete answer waits for the tap's finish (the turn queued, or
    spooled), at most the forwarder's ``capture_deadline``: a stream's closing chunk, and a plain
    body's last chunk (held back one chunk behind the upstream), reach the client only once its
    turn is on disk, so a process killed after its client has the whole answer has its turn. Past
    the deadline the answer ends and the finish goes on in the background; an incomplete answer
    (cut upstream, client gone) is finished in the background, as before.
    """

    def __init__(
        self,
        upstream: httpx2.Response,
        keepalive_interval: float,
        *,
        tap: Tap | None = None,
        headers: dict[str, str] | None = None,
        forwarder: Forwarder,
    ) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.streaming = is_event_stream(upstream)
        self.raw_headers = response_headers(upstream, self.streaming) + [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()
        ]
        self.tap, self.forwarder, self.complete = tap, forwarder, False
        self.background = None
        identity = upstream.headers.get("content-encoding", "identity") == "identity"
        self.keepalive_interval = keepalive_interval if self.streaming and identity else 0.0
        self.last_write = 0.0
        self.at_boundary = True
        self.write_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.streaming:
                await self._relay(send)
                return
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
                if self.keepalive_interval > 0:
                    group.start_soon(self._keepalive, send)
                await self._relay(send)
                group.cancel_scope.cancel()
        finally:
            await self.upstream.aclose()
            self.forwarder.open_responses -= 1
            if self.tap is not None:
                self.forwarder.spawn(self.tap.finish(self.status_code, self.complete))

    async def _relay(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self.last_write = loop.time()
        # a tapped plain body keeps its newest chunk back: its last one goes once the turn is queued
        hold = self.tap is not None and not self.streaming and self.forwarder.capture_deadline > 0
        held = b""
        try:
            async for chunk in self.upstream.aiter_raw():
                if hold:
                    self._feed(chunk)
                    chunk, held = held, chunk
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                async with self.write_lock:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.last_write = loop.time()
                self._feed(chunk)
                self.at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
        except httpx2.HTTPError as exc:
            # Headers are gone already: ending without the last chunk makes the server drop the
            # connection, so the client sees a truncated body instead of a clean, wrong one.
            log.warning("upstream stream broke: %s", type(exc).__name__)
            if held:  # what the upstream sent, then the cut
                await send({"type": "http.response.body", "body": held, "more_body": True})
            return
        if self.forwarder.capture_deadline > 0:
            self.complete = True  # the whole answer is here: its turn is queued before the client sees the end
            await self._settle()
        async with self.write_lock:
            await send({"type": "http.response.body", "body": held, "more_body": False})
        self.complete = True

    async def _settle(self) -> None:
        """Finish the tap before the answer ends, waiting at most the capture deadline (never cancelling it)."""
        deadline = self.forwarder.capture_deadline
        if self.tap is None or deadline <= 0:
            return
        tap, self.tap = self.tap, None  # finished here, not again when the response is released
        finishing = self.forwarder.spawn(tap.finish(self.status_code, True))
        done, _ = await asyncio.wait({finishing}, timeout=deadline)
        if not done:
            self.forwarder.captures_late += 1
            log.warning("turn capture slower than %.0f ms: the answer ends, the capture goes on", deadline * 1000)

    def _feed(self, chunk: bytes) -> None:
        if self.tap is None:
            return
        try:
            self.tap.feed(chunk)
        except Exception:  # a broken tap loses a memory, never the client's response
            log.exception("response tap failed; memory capture skipped for this response")
            self.tap = None

    async def _keepalive(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - self.last_write
            if idle < self.keepalive_interval:
                await asyncio.sleep(self.keepalive_interval - idle)
                continue
            if self.at_boundary:
                async with self.write_lock:
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            self.last_write = loop.time()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope, after: asyncio.Event | None = None) -> None:
    """Cancel ``scope`` when the client goes away (listening only once ``after`` is set, if given)."""
    if after is not None:
        await after.wait()
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
