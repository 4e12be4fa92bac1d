"""A replay upstream: real recorded OpenAI traffic served back over HTTP, for tests without network.

The recordings (``../shared/data/recorded-openai/*.yaml`` beside the repo, VCR cassettes; see their
README) are data: each recorded request is answered with the recorded status, headers and body. JSON
bodies are the recorded ``parsed_body`` serialized; an SSE body is the recorded text, cut into its
events and sent event by event as a real stream.

:class:`Replay` is a plain ASGI app. ``play(exchanges)`` queues what it may answer; a request takes the
first queued exchange with its method and path (query ignored) and, where several share the path,
the same body fields (``input``, ``messages``, ``previous_response_id``, ``conversation``) unless
``match_body=False``. A poll (GET) past the recorded ones gets the last answer for its path again, as
the real API would; anything else unrecorded is a 500 naming itself, kept in :attr:`Replay.misses`.

A ``fallback`` app (the emulator) answers the Conversations API when nothing recorded does: the
Assistants bridge keeps threads there. A recorded response created on a conversation (the bridge's
runs) then appends its input and, once finished, its output to that conversation, as the real one does.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "recorded-openai"
"""Where the cassettes live: ``../shared/data/recorded-openai/`` relative to the repository."""

FRAMING = {"connection", "keep-alive", "transfer-encoding", "content-length"}
"""Recorded headers the replay does not repeat: its own server frames the body it sends."""

MATCHED_FIELDS = ("input", "messages", "previous_response_id", "conversation")
TERMINAL = {"completed", "failed", "incomplete", "cancelled"}


@dataclass(frozen=True)
class Exchange:
    """One recorded request and the answer the replay gives it."""

    cassette: str
    index: int
    method: str
    path: str
    request: Any
    """The recorded request body (parsed JSON), or None."""
    status: int
    headers: tuple[tuple[str, str], ...]
    """The recorded response headers (lower-case names), framing headers left out."""
    body: bytes
    """Exactly the bytes the replay sends."""
    events: tuple[bytes, ...] = ()
    """An SSE body cut into its events, each with its blank line: their concatenation is ``body``."""

    @property
    def name(self) -> str:
        return f"{self.cassette}[{self.index}]"

    @property
    def content_type(self) -> str:
        return dict(self.headers).get("content-type", "")

    @property
    def stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    def data(self) -> list[Any]:
        """The JSON ``data`` of each event of a stream (``[DONE]`` left out)."""
        return [payload for payload in (_data_of(event) for event in self.events) if payload is not None]

    def json(self) -> Any:
        """The JSON body (a stream: None)."""
        return None if self.stream else json.loads(self.body)

    def response(self) -> dict[str, Any] | None:
        """The Responses object this exchange ends with: the JSON body, or a stream's last ``response``."""
        if not self.stream:
            body = self.json()
            return body if isinstance(body, dict) and body.get("object") == "response" else None
        found = [event["response"] for event in self.data() if isinstance(event.get("response"), dict)]
        return found[-1] if found else None


def _data_of(event: bytes) -> Any:
    lines = [line[5:].removeprefix(" ") for line in event.decode().splitlines() if line.startswith("data:")]
    text = "\n".join(lines)
    return None if not lines or text == "[DONE]" else json.loads(text)


def split_events(text: str) -> tuple[bytes, ...]:
    """An SSE body cut after each blank line (the text must use ``\\n``, as the recordings do)."""
    events, rest = [], text
    while "\n\n" in rest:
        head, _, rest = rest.partition("\n\n")
        events.append((head + "\n\n").encode())
    if rest:
        events.append(rest.encode())
    return tuple(events)


def cassette_names() -> list[str]:
    """Every cassette, by file stem."""
    return sorted(path.stem for path in RECORDINGS.glob("*.yaml"))


def cassette(name: str) -> list[Exchange]:
    """The exchanges of one cassette (by file stem), OpenAI's only (other providers' calls left out)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with (RECORDINGS / f"{name}.yaml").open("rb") as fh:
        recorded = yaml.load(fh, Loader=loader)
    exchanges = []
    for index, interaction in enumerate(recorded["interactions"]):
        request, response = interaction["request"], interaction["response"]
        uri = urlsplit(request["uri"])
        if uri.hostname != "api.openai.com":
            continue
        headers = tuple(
            (name.lower(), value)
            for name, values in response["headers"].items()
            if name.lower() not in FRAMING
            for value in (values if isinstance(values, list) else [values])
        )
        events: tuple[bytes, ...] = ()
        if "parsed_body" in response:
            body = json.dumps(response["parsed_body"], indent=2).encode()
        else:
            text = response["body"]["string"]
            body = text.encode()
            if dict(headers).get("content-type", "").startswith("text/event-stream"):
                events = split_events(text)
        exchanges.append(
            Exchange(
                cassette=name,
                index=index,
                method=request["method"],
                path=uri.path,
                request=request.get("parsed_body"),
                status=response["status"]["code"],
                headers=headers,
                body=body,
                events=events,
            )
        )
    return exchanges


@dataclass
class Received:
    """A request as it reached the replay."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Played:
    exchange: Exchange
    received: Received
    match_body: bool = True


@dataclass
class Replay:
    """The ASGI app. Thread-safe to load from a test while a server thread serves it."""

    fallback: Any = None
    """An ASGI app for unrecorded Conversations calls (the emulator), or None."""
    fallback_paths: tuple[str, ...] = ("/v1/conversations",)
    event_delay: float = 0.0
    """Seconds between the events of a stream."""
    chunk_size: int = 0
    """Cut a stream every ``chunk_size`` bytes instead of after each event (0: by event), as TCP may."""
    queued: list[tuple[Exchange, bool]] = field(default_factory=list)
    served: list[Played] = field(default_factory=list)
    misses: list[Received] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conversation_of: dict[str, str] = field(default_factory=dict)
    _synced: set[str] = field(default_factory=set)

    def play(self, exchanges: Iterable[Exchange], *, match_body: bool = True) -> list[Exchange]:
        """Queue exchanges to answer; ``match_body=False``: by method and path only, in order."""
        exchanges = list(exchanges)
        with self._lock:
            self.queued.extend((exchange, match_body) for exchange in exchanges)
        return exchanges

    def reset(self) -> None:
        with self._lock:
            self.queued.clear()
            self.served.clear()
            self.misses.clear()
            self._conversation_of.clear()
            self._synced.clear()
        self.event_delay, self.chunk_size = 0.0, 0
        state = getattr(getattr(self.fallback, "state", None), "emulator", None)
        if state is not None:
            state.reset()

    @property
    def pending(self) -> list[Exchange]:
        """Queued exchanges no request took yet."""
        with self._lock:
            return [exchange for exchange, _ in self.queued]

    def _take(self, received: Received) -> Exchange | None:
        body = received.json()
        with self._lock:
            for position, (exchange, match_body) in enumerate(self.queued):
                if (exchange.method, exchange.path) != (received.method, received.path):
                    continue
                if match_body and not _same_fields(exchange.request, body):
                    continue
                del self.queued[position]
                self.served.append(Played(exchange, received, match_body))
                return exchange
            if received.method == "GET":  # a poll past the recorded ones: the last answer again
                for played in reversed(self.served):
                    if (played.exchange.method, played.exchange.path) == ("GET", received.path):
                        self.served.append(Played(played.exchange, received))
                        return played.exchange
        return None

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        received = Received(scope["method"], scope["path"], scope["query_string"].decode(), headers, b"".join(chunks))
        exchange = self._take(received)
        if exchange is None and self.fallback is not None and received.path.startswith(self.fallback_paths):
            await self.fallback(scope, _replayed(received.body), send)
            return
        if exchange is None:
            self.misses.append(received)
            miss = f"replay: nothing recorded for {received.method} {received.path}"
            error = json.dumps({"error": {"message": miss, "type": "replay_miss"}}).encode()
            await _send(send, 500, [("content-type", "application/json")], [error])
            return
        self._sync_conversation(exchange, received)
        if exchange.stream:
            size = self.chunk_size
            chunks = [exchange.body[at : at + size] for at in range(0, len(exchange.body), size)] if size else None
            await _send(
                send, exchange.status, list(exchange.headers), chunks or exchange.events, self.event_delay, sized=False
            )
        else:
            await _send(send, exchange.status, list(exchange.headers), [exchange.body])

    def _sync_conversation(self, exchange: Exchange, received: Received) -> None:
        """Keep the fallback in step with what was served.

        A recorded conversation created or deleted is created or deleted there too (with the recorded
        id), and a response made on a conversation adds its input, and once finished its output, to it.
        """
        store = getattr(getattr(self.fallback, "state", None), "emulator", None)
        if store is None or exchange.status != 200:
            return
        if exchange.path.startswith("/v1/conversations"):
            _mirror_conversation(store, exchange)
            return
        response = exchange.response()
        if response is None:
            return
        body = received.json() if received.method == "POST" else None
        conversation = body.get("conversation") if isinstance(body, dict) else None
        if isinstance(conversation, str) and _has(store, conversation):
            self._conversation_of[response["id"]] = conversation
            if body.get("input"):
                from proxy.emulator.items import normalize_input

                store.conversations.get(conversation).items.extend(normalize_input(body["input"], "input"))
        conversation = self._conversation_of.get(response["id"])
        if conversation and response.get("status") in TERMINAL and response["id"] not in self._synced:
            self._synced.add(response["id"])
            store.conversations.get(conversation).items.extend(response.get("output") or [])


def _mirror_conversation(store: Any, exchange: Exchange) -> None:
    from proxy.emulator.state import Conversation

    answer = exchange.json()
    if not isinstance(answer, dict):
        return
    if answer.get("object") == "conversation" and exchange.method == "POST" and exchange.path == "/v1/conversations":
        adopted = Conversation(answer["id"], answer["created_at"], answer.get("metadata") or {})
        store.conversations._by_id[adopted.id] = adopted  # the recorded id, so later calls find it
    elif answer.get("object") == "conversation.deleted" and _has(store, answer["id"]):
        store.conversations.delete(answer["id"])


def _has(store: Any, conversation_id: str) -> bool:
    """Whether the fallback holds the conversation (a recorded one it never made: left alone)."""
    try:
        store.conversations.get(conversation_id)
    except Exception:  # noqa: BLE001 - the emulator's not-found error
        return False
    return True


def _same_fields(recorded: Any, received: Any) -> bool:
    if not isinstance(recorded, dict) or not isinstance(received, dict):
        return recorded == received or recorded is None
    return all(recorded.get(name) == received.get(name) for name in MATCHED_FIELDS)


def _replayed(body: bytes) -> Callable[[], Any]:
    """A ``receive`` handing an already read body to another app."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: wait for the disconnect that never comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _send(
    send: Callable[..., Any],
    status: int,
    headers: list[tuple[str, str]],
    chunks: list[bytes] | tuple[bytes, ...],
    delay: float = 0.0,
    *,
    sized: bool = True,
) -> None:
    """Answer with ``chunks`` one by one (a stream: chunked, ``delay`` seconds apart)."""
    raw = [(name.encode(), value.encode()) for name, value in headers]
    if sized:
        raw.append((b"content-length", str(sum(len(chunk) for chunk in chunks)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    for position, chunk in enumerate(chunks):
        if position and delay:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
