"""A client that gives up takes its upstream call with it, at once, whatever stage the call is in.

Against the real API an abandoned call keeps generating and billing, and holds one of the proxy's
upstream connections until it ends: here the emulator answers only after a long ``delay`` and each
test checks, on the proxy's own counters and its HTTP pool, that the upstream connection was
closed the moment the client left: while waiting for the first byte (plain and streamed, hooked
route and plain forwarding), and while the request body was still going up. Stopping the server
with such calls in flight ends within its shutdown deadline.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import httpx
import pytest

from proxy.server import ServerThread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}
EMBED = {"model": "text-embedding-3-small", "input": "one two three"}


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def busy_connections(forwarder) -> int:
    """Upstream connections in the pool that are neither idle nor closed: a request is on them."""
    return sum(not (c.is_idle() or c.is_closed()) for c in forwarder.client._transport._pool.connections)


def send_raw(
    server: ServerThread, path: str, body: bytes, *, sent: int | None = None, extra: bytes = b""
) -> socket.socket:
    """Open a connection and send a POST with ``body`` (only its first ``sent`` bytes); left open."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        b"POST %s HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer sk-test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (path.encode(), len(body), extra)
    )
    sock.sendall(head + body[: len(body) if sent is None else sent])
    return sock


def abort(sock: socket.socket) -> None:
    """Leave the way a killed client does: a reset, no goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class Records(logging.Handler):
    """Collects each record once, however many of the loggers it passes carry this handler."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self.seen:
            self.seen.add(id(record))
            self.records.append(record)


@pytest.fixture
def logged():
    """Every record of the proxy and of uvicorn (whose loggers do not propagate to the root).

    uvicorn configures its loggers when a server is created: servers a test makes must be made
    before this fixture (request it last).
    """
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    ours = logging.getLogger("memproxy")
    level = ours.level
    ours.setLevel(logging.INFO)  # (setLevel, not .level: it clears the loggers' cached decisions)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)
    ours.setLevel(level)


def of(server: ServerThread, records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The records ``server`` logged (the emulator runs in this process too, on its own thread)."""
    return [r for r in records if r.thread == server.thread.ident]


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy()


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/chat/completions", CHAT),  # hooked: the hook read the body, the forwarder sends it
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/embeddings", EMBED),  # plain forwarding: the body streams up as it arrives
    ],
    ids=["hooked", "hooked-stream", "relayed"],
)
def test_a_client_gone_before_the_first_byte_cancels_the_upstream_call(proxy, emulator, logged, path, payload) -> None:
    forwarder = proxy.app.state.runtime.forwarder
    emulator.fault(path=path, delay=5)
    sock = send_raw(proxy, path, json.dumps(payload).encode())
    assert wait_for(lambda: forwarder.waiting == 1 and busy_connections(forwarder) == 1)
    assert wait_for(lambda: len(emulator.requests(path)) == 1)  # the upstream has it, and sits on it

    started = time.monotonic()
    abort(sock)
    assert wait_for(lambda: forwarder.waiting == 0 and busy_connections(forwarder) == 0, timeout=2)
    released = time.monotonic() - started
    assert released < 0.5, f"upstream held {released:.2f} s after the client left"
    assert forwarder.open_responses == 0

    def lines() -> list[str]:
        return [r.getMessage() for r in of(proxy, logged) if r.name == "memproxy.forward"]

    assert wait_for(lines)  # logged on the server's thread, just after the connection went
    assert lines() == ["client went away before the upstream answered: upstream request cancelled"]
    # the access line comes last: wait for it here, or it lands in the next test's records
    assert wait_for(lambda: [r.status for r in of(proxy, logged) if r.name == "memproxy.access"] == [499])
    assert not [r for r in of(proxy, logged) if r.exc_info]


@pytest.mark.parametrize(
    ("path", "payload", "reaches_upstream"),
    [
        ("/v1/embeddings", EMBED, True),  # the first bytes are already upstream when the client leaves
        ("/v1/chat/completions", CHAT, False),  # the hook is still reading the body
    ],
    ids=["relayed", "hooked"],
)
def test_a_client_gone_mid_body_ends_the_upload_and_logs_one_line(
    proxy, emulator, logged, path, payload, reaches_upstream
) -> None:
    forwarder = proxy.app.state.runtime.forwarder
    body = json.dumps({**payload, "padding": "x" * 200_000}).encode()
    sock = send_raw(proxy, path, body, sent=100_000)
    if reaches_upstream:
        assert wait_for(lambda: forwarder.waiting == 1 and busy_connections(forwarder) == 1)
    else:
        time.sleep(0.3)
    abort(sock)
    assert wait_for(lambda: forwarder.waiting == 0 and busy_connections(forwarder) == 0, timeout=2)
    route = "/v1/{path:path}" if reaches_upstream else path

    def access() -> list[logging.LogRecord]:  # this request's (a late line of another test's may come)
        return [r for r in of(proxy, logged) if r.name == "memproxy.access" and r.route == route]

    assert wait_for(access)
    if reaches_upstream:  # the upstream saw the upload end early: it got less than was announced
        assert len(emulator.requests(path)[-1]["body"]) <= 100_000 < len(body)
    else:
        assert not emulator.requests(path)
    records = of(proxy, logged)
    assert not [r for r in records if r.exc_info], "a traceback was logged"
    assert not [r for r in records if r.levelno >= logging.WARNING]
    ours = [r for r in records if r.name == "memproxy.limits"]
    assert len(ours) == 1 and ours[0].levelno == logging.INFO
    assert ours[0].getMessage().startswith("client closed the connection while sending the request body")
    assert [r.status for r in access()] == [499]


def test_the_waiting_gauge_counts_calls_until_their_client_leaves(proxy, emulator) -> None:
    def gauge() -> float:
        text = httpx.get(proxy.url + "/metrics").text
        return float(
            next(
                line.split()[1] for line in text.splitlines() if line.startswith("memproxy_upstream_requests_waiting ")
            )
        )

    emulator.fault(path="/chat/completions", delay=5, times=3)
    sockets = [send_raw(proxy, "/v1/chat/completions", json.dumps(CHAT).encode()) for _ in range(3)]
    assert wait_for(lambda: gauge() == 3)
    for sock in sockets:
        abort(sock)
    assert wait_for(lambda: gauge() == 0, timeout=2)


@pytest.fixture
def short_deadline(make_proxy):
    return make_proxy(shutdown_timeout=1)


def test_stopping_with_calls_in_flight_ends_within_the_shutdown_deadline(short_deadline, emulator, logged) -> None:
    """One abandoned call, one whose client waits on: the server is gone after the deadline, the
    waiting client gets an OpenAI-shaped 503 it must not retry (the upstream had the POST), and no
    traceback is logged."""
    server = short_deadline
    forwarder = server.app.state.runtime.forwarder
    emulator.fault(path="/chat/completions", delay=5, times=2)
    abandoned = send_raw(server, "/v1/chat/completions", json.dumps(CHAT).encode())
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30))
    )
    waiting.start()
    assert wait_for(lambda: forwarder.waiting == 2)
    abort(abandoned)
    assert wait_for(lambda: forwarder.waiting == 1, timeout=2)

    started = time.monotonic()
    server.stop()
    stopped = time.monotonic() - started
    waiting.join(timeout=10)
    assert stopped < 1 + 2.0, f"stopping took {stopped:.1f} s"
    assert not server.thread.is_alive()
    assert answers and answers[0].status_code == 503
    assert answers[0].json()["error"]["code"] == "shutting_down"
    assert answers[0].headers["x-should-retry"] == "false"
    assert busy_connections(forwarder) == 0
    assert not [r for r in of(server, logged) if r.exc_info], "a traceback was logged"
