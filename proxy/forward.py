"""Transparent pass-through to the upstream: raw bytes both ways, streamed, through one client.

Everything a hook does not need to read is relayed untouched: the request body streams up as it
arrives, the response streams down as the upstream sends it, still in its content encoding.

Forwarded calls go through aiohttp's client (C parser, headers and body in one write, no anyio
layers): it costs about a quarter of the CPU per call of httpx2's pool, which was most of what the
proxy added to a call. The hooks' own small upstream reads (:meth:`Forwarder.fetch_json`) and the
Assistants bridge keep the httpx2 client the runtime shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import aiohttp
import anyio
import httpx2
from aiohttp import hdrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from yarl import URL

from proxy.config import Settings
from proxy.errors import CLIENT_CLOSED, error_response
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
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
KEEPALIVE = b": keepalive\n\n"
PRIVATE_PREFIX = b"x-memory"
"""The proxy's own request headers (``X-Memory``, ``X-Memory-User``, ``X-Memory-Tenant``, any ``X-Memory*``)."""


def make_client(settings: Settings) -> httpx2.AsyncClient:
    """The one upstream client: no read timeout by default, because SSE streams may idle."""
    timeout = httpx2.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )
    limits = httpx2.Limits(max_connections=settings.max_connections, max_keepalive_connections=256)
    return httpx2.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False)


SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
"""Headers aiohttp would add on its own: only the client's go upstream (Host and Content-Length excepted)."""
MAX_UPSTREAM_HEADER = 65536
"""Bytes an upstream response's header line or field may have (aiohttp's default, 8 KB, is too tight)."""


def make_session(settings: Settings) -> aiohttp.ClientSession:
    """The forwarding client: one keep-alive pool, raw bodies (no decompression), no cookies, no redirects.

    The pool's size is :class:`Forwarder`'s to bound (``max_connections``, waiting ``pool_timeout``);
    ``connect_timeout`` bounds opening a connection, ``read_timeout`` each read (None: none, for SSE).
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # a cookie one caller's answer set must never reach another's call
        skip_auto_headers=SKIP_AUTO_HEADERS,
        trust_env=False,
        request_class=_Request,
        max_line_size=MAX_UPSTREAM_HEADER,
        max_field_size=MAX_UPSTREAM_HEADER,
    )


KEEP_ALIVE = ("Connection", "keep-alive")


class _Request(aiohttp.ClientRequest):
    """aiohttp's request without the ``Content-Length: 0`` it adds to a DELETE that has no body: only the
    client's own headers go up (the differential tests compare them with a direct call's)."""

    def update_body_from_data(self, body: Any, _stacklevel: int = 3) -> None:
        had_length = hdrs.CONTENT_LENGTH in self.headers
        super().update_body_from_data(body, _stacklevel)
        if body is None and not had_length:
            self.headers.pop(hdrs.CONTENT_LENGTH, None)


class PoolTimeout(Exception):
    """No upstream connection came free within ``pool_timeout``."""


UpstreamFailure = (aiohttp.ClientError, TimeoutError, PoolTimeout)
"""What a forwarded call may raise for a reason the upstream or the network is behind."""


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

    def __init__(self, client: httpx2.AsyncClient, settings: Settings, observer: Observer = NOOP) -> None:
        self.client = client  # the hooks' small reads (fetch_json)
        self.observer = observer
        self.base = httpx2.URL(settings.upstream_url)
        self.origin = f"{self.base.scheme}://{self.base.netloc.decode('ascii')}"
        self.base_path = self.base.raw_path.split(b"?")[0].rstrip(b"/")
        self.pool_timeout = settings.pool_timeout
        self.slots = asyncio.Semaphore(settings.max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._settings = settings
        self.keepalive_interval = settings.keepalive_interval
        # never sent upstream, nor is any X-Memory* header
        self.private_headers: tuple[str, ...] = ("host", settings.memory_user_header)
        self.capture_deadline = settings.memory_capture_deadline_ms / 1000
        self.tasks: set[asyncio.Task[Any]] = set()
        self.open_responses = 0  # upstream responses not yet released: a gauge, and a leak detector
        self.waiting = 0  # requests sent upstream and not answered yet (no response headers)
        self.captures_late = 0  # answers that ended before their tap finished (capture deadline passed)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The forwarding client, made on first use (it belongs to the event loop serving the calls)."""
        if self._session is None:
            self._session = make_session(self._settings)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()  # kept: a closed session refuses calls, it is not made anew

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a tap's finish as its own task: a response that stops waiting for it never cancels it."""
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def target(self, request: Request) -> URL | None:
        """The upstream URL of a client's ``/v1/...`` call, its path and query kept byte for byte."""
        scope = request.scope
        suffix = safe_suffix(scope.get("raw_path") or scope["path"].encode())
        if suffix is None:
            return None
        query = scope.get("query_string", b"")
        raw = self.base_path + suffix + (b"?" + query if query else b"")
        return URL(self.origin + raw.decode("latin-1"), encoded=True)

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
        upload: Upload | None = None
        if body is not None:
            headers_up = [(k, v) for k, v in headers_up if k.lower() != b"content-length"]
            content: bytes | AsyncIterator[bytes] | None = body
        elif (read := _read_already(request)) is not None:
            content = read
        elif _has_body(request):
            upload = Upload(request)
            uploaded, content = upload.done, upload.chunks()
        else:
            content = None
        try:
            upstream = await self.send_unless_gone(request, url, headers_up, content, uploaded)
        except UpstreamFailure as exc:
            if upload is not None and upload.failed is not None:
                raise upload.failed from None  # the client's side broke the upload (gone, or silent too long)
            response = upstream_error(exc, request.method)
            response.headers.update(extra)
            return response
        except ValueError as exc:  # refused before a byte went out (a header aiohttp will not send)
            log.info("request refused before sending: %s", type(exc).__name__)
            return error_response(400, UNSENDABLE, code="invalid_request", should_retry=False, headers=extra)
        if upstream is None:
            log.info("client went away before the upstream answered: upstream request cancelled")
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it: it tells the access log and metrics
        self.open_responses += 1
        return UpstreamResponse(upstream, self.keepalive_interval, tap=tap, headers=extra, forwarder=self)

    async def send_unless_gone(
        self,
        request: Request,
        url: URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
        uploaded: asyncio.Event | None,
    ) -> aiohttp.ClientResponse | None:
        """:meth:`send`, cancelled the moment the client goes away: None then.

        Cancelling closes the upstream connection, so the upstream stops working (and billing) on a
        call nobody will read. The client is watched once its body has gone up (``uploaded``; at
        once without one); while the body still streams up, a client gone ends the upload itself
        (``ClientDisconnect``, raised through here to :class:`proxy.limits.ClientGuard`).
        """
        upstream: aiohttp.ClientResponse | None = None
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
        url: URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """Returns at the upstream's response headers: the time taken is the upstream latency.

        The call holds one of ``max_connections`` slots until its response is released
        (:meth:`release`); none free within ``pool_timeout`` is a :class:`PoolTimeout`.
        """
        started = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(self.pool_timeout):
                    await self.slots.acquire()
            except TimeoutError:
                raise PoolTimeout from None
            try:
                fields = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in headers]
                fields.append(KEEP_ALIVE)  # as the client's own call would say (HTTP/1.1 clients send it)
                return await self.session.request(method, url, headers=fields, data=content, allow_redirects=False)
            except BaseException:
                self.slots.release()
                raise
        finally:
            self.observer.upstream(time.perf_counter() - started)

    def release(self, upstream: aiohttp.ClientResponse) -> None:
        """Give a response's connection back: to the pool when its body was read to the end, else closed
        (a half-read response's connection cannot carry another call)."""
        if upstream.content.is_eof():
            upstream.release()
        else:
            upstream.close()
        self.slots.release()

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


def _read_already(request: Request) -> bytes | None:
    """The body a hook has read already (Starlette keeps it on the request) when the client gave its length:
    sent as bytes, in the same write as the headers. A chunked body still goes up chunked, as it came."""
    body = getattr(request, "_body", None)
    return body if isinstance(body, bytes) and "content-length" in request.headers else None


def _has_body(request: Request) -> bool:
    """Whether the client sends a body (none at all when it sent no length or an empty one)."""
    headers = request.headers
    if "transfer-encoding" in headers:
        return True
    return headers.get("content-length", "0") != "0"


class Upload:
    """The client's body as it arrives (``chunks``); ``done`` is set once all of it has gone up.

    What the client's side raises while it streams (a client gone mid-body, a body too slow) is kept in
    ``failed``: the upstream client reports it as its own connection error, and the caller re-raises it.
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.done = asyncio.Event()
        self.failed: Exception | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.stream():
                yield chunk
        except Exception as exc:
            self.failed = exc
            raise
        self.done.set()


UNSENDABLE = "The request could not be sent upstream: a header or the target is malformed."


def upstream_error(exc: BaseException, method: str) -> Response:
    """Map a transport failure to 502/503/504.

    ``x-should-retry`` is true only where the upstream cannot have acted on the request: the
    connection never opened, or the method is idempotent. A POST that timed out mid-flight may
    have created a run upstream, and a blind retry would create a second one.
    """
    never_sent = isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, PoolTimeout))
    retry = never_sent or method.upper() in IDEMPOTENT
    if isinstance(exc, PoolTimeout):
        status, code, message = 503, "upstream_busy", "No upstream connection was free in time."
    elif never_sent:
        status, code, message = 502, "upstream_unreachable", "The upstream API could not be reached."
    elif isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        status, code, message = 504, "upstream_timeout", "The upstream API did not answer in time."
    else:
        status, code, message = 502, "upstream_error", "The upstream API closed the connection."
    log.warning("upstream %s: %s", code, type(exc).__name__)
    return error_response(status, message, type="upstream_error", code=code, should_retry=retry)


def response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    headers = filter_headers(upstream.raw_headers)
    if is_event_stream(upstream):
        # Ask nginx / ingress controllers not to buffer or cache a live stream.
        headers = [(k, v) for k, v in headers if k.lower() not in (b"cache-control", b"x-accel-buffering")]
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    return headers


def is_event_stream(upstream: aiohttp.ClientResponse) -> bool:
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
        upstream: aiohttp.ClientResponse,
        keepalive_interval: float,
        *,
        tap: Tap | None = None,
        headers: dict[str, str] | None = None,
        forwarder: Forwarder,
    ) -> None:
        self.upstream = upstream
        self.status_code = upstream.status
        self.raw_headers = response_headers(upstream) + [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()
        ]
        self.tap, self.forwarder, self.complete = tap, forwarder, False
        self.background = None
        self.streaming = is_event_stream(upstream)
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
            self.forwarder.release(self.upstream)
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
            async for chunk in self.upstream.content.iter_any():
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
        except (aiohttp.ClientError, TimeoutError) as exc:
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
