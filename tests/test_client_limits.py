"""Client limits (README, "Limits"): what a client may make the proxy hold, over real sockets.

Request headers are bounded in bytes (431, refused as they arrive, never buffered whole or
forwarded) and in time (408 at the header deadline: slowloris), a request body may not stall
(408), and ``memproxy serve`` runs with all of it, as do the tests' servers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


class Answer:
    """What came back on a raw connection: status, headers, body, and when the proxy closed it."""

    def __init__(self, data: bytes, closed_after: float) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1]) if data else 0
        self.headers = {
            name.strip().lower().decode(): value.strip().decode()
            for name, _, value in (line.partition(b":") for line in lines[1:])
        }
        self.closed_after = closed_after

    def error(self) -> dict:
        return json.loads(self.body)["error"]


def read_all(sock: socket.socket, started: float) -> Answer:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return Answer(data, time.monotonic() - started)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


@pytest.fixture(scope="module")
def strict(make_proxy):
    """Small limits, so each test is quick: 8 KiB of headers, 2 KiB per header, 1 s deadlines."""
    return make_proxy(max_header_bytes=8192, max_header_field_bytes=2048, header_timeout=1.0, body_timeout=1.0)


@pytest.fixture(scope="module")
def default(make_proxy):
    return make_proxy()


def test_a_16_mb_header_is_a_431_as_soon_as_the_limit_is_passed(default, emulator) -> None:
    """Refused after 64 KiB of it (the default), while it still arrives: never buffered whole, never forwarded."""
    sock = connect(default.url)
    answer: list[Answer] = []
    sent_when_answered: list[int] = []
    sent = 0
    started = time.monotonic()
    reader = threading.Thread(target=lambda: (answer.append(read_all(sock, started)), sent_when_answered.append(sent)))
    reader.start()
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\nX-Big: ")
    chunk = b"a" * 65536
    try:
        while sent < 16 * 1024 * 1024 and reader.is_alive():
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(b"\r\n\r\n")
    except OSError:
        pass  # the proxy stopped reading: what it had to say is already on its way
    reader.join(timeout=10)
    sock.close()
    assert answer[0].status == 431, answer[0].body
    assert answer[0].error()["code"] == "request_header_fields_too_large"
    assert answer[0].headers["connection"] == "close"
    assert sent_when_answered[0] < 8 * 1024 * 1024  # the answer did not wait for the header to end
    assert not emulator.requests()


def test_headers_over_the_total_are_a_431_and_not_forwarded(strict, emulator) -> None:
    headers = {f"x-part-{i}": "v" * 1500 for i in range(6)}  # 9 KB in all, each under 2 KiB
    response = httpx.post(strict.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert not emulator.requests()


def test_one_header_over_the_per_header_limit_is_a_431_and_not_forwarded(strict, emulator) -> None:
    response = httpx.post(strict.url + "/v1/chat/completions", json=CHAT, headers={"x-long": "v" * 3000})
    assert response.status_code == 431
    error = response.json()["error"]
    assert error["code"] == "request_header_fields_too_large" and "x-long" in error["message"]
    assert response.headers["connection"] == "close"
    assert not emulator.requests()


def test_headers_within_the_limits_go_through(strict, emulator) -> None:
    headers = {f"x-part-{i}": "v" * 1500 for i in range(4)}
    response = httpx.post(strict.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    assert emulator.requests("/v1/chat")[-1]["headers"]["x-part-3"] == "v" * 1500


def test_body_bytes_never_count_as_header_bytes(strict, emulator) -> None:
    """A body far over the header limit, its end in one chunk, then a second request on the connection."""
    body = json.dumps({**CHAT, "padding": "x" * 200_000}).encode()
    sock = connect(strict.url)
    for _ in range(2):
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        time.sleep(0.2)  # the headers are in: the whole body now comes in a few large chunks
        sock.sendall(body)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        received = len(head.partition(b"\r\n\r\n")[2])
        while received < length:
            received += len(sock.recv(65536))
    sock.close()
    assert len(emulator.requests("/v1/chat")) == 2


def test_slowloris_connections_get_a_408_at_the_header_deadline(strict) -> None:
    """Each sends a header line every 0.2 s and never ends its headers; meanwhile others are served."""
    results: list[Answer] = []

    def slow(index: int) -> None:
        sock = connect(strict.url)
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n")
        sock.settimeout(0.2)
        data = b""
        while time.monotonic() - started < 5:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                sock.sendall(b"X-Slow-%d: %d\r\n" % (index, time.monotonic_ns()))
                continue
            data += chunk
            if not chunk:
                break
        results.append(Answer(data, time.monotonic() - started))
        sock.close()

    clients = [threading.Thread(target=slow, args=(i,)) for i in range(20)]
    for client in clients:
        client.start()
    assert httpx.get(strict.url + "/healthz").status_code == 200
    for client in clients:
        client.join()
    assert [answer.status for answer in results] == [408] * 20
    assert all(answer.error()["code"] == "request_timeout" for answer in results)
    assert all(0.9 <= answer.closed_after < 2.0 for answer in results), [a.closed_after for a in results]


def test_a_connection_that_never_sends_a_request_is_closed(strict) -> None:
    sock = connect(strict.url)
    answer = read_all(sock, time.monotonic())
    sock.close()
    assert answer.status == 0 and 0.9 <= answer.closed_after < 2.0


def test_the_header_deadline_also_holds_for_the_next_request_on_a_kept_alive_connection(strict) -> None:
    sock = connect(strict.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pro")  # and nothing more
    answer = read_all(sock, started)
    sock.close()
    assert answer.status == 408 and 0.9 <= answer.closed_after < 2.0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"], ids=["hooked", "relayed"])
def test_a_stalled_body_is_a_408_and_the_upstream_is_let_go(strict, emulator, path) -> None:
    forwarder = strict.app.state.runtime.forwarder
    sock = connect(strict.url)
    started = time.monotonic()
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer sk-test\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": ' % path.encode()
    )
    answer = read_all(sock, started)
    sock.close()
    assert answer.status == 408 and answer.error()["code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert 0.9 <= answer.closed_after < 2.0
    assert forwarder.waiting == 0 and forwarder.open_responses == 0
    assert not forwarder.session.connector._acquired, "no upstream connection still carries the call"


def test_a_slow_but_steady_body_is_not_cut(strict, emulator) -> None:
    """The body deadline is on silence, not on the whole body: 0.4 s between chunks, 2 s in all."""
    body = json.dumps(CHAT).encode()
    parts = [body[i : i + 10] for i in range(0, len(body), 10)][:5] + [body[50:]]

    def trickle():
        for part in parts:
            time.sleep(0.4)
            yield part

    response = httpx.post(
        strict.url + "/v1/chat/completions",
        content=trickle(),
        headers={"content-type": "application/json", "authorization": "Bearer sk-test"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert emulator.requests("/v1/chat")[-1]["body"] == CHAT


def test_memproxy_serve_runs_with_the_limits(emulator_server, tmp_path, memory_model_dir) -> None:
    """The real command: 431, 408, and SIGTERM ending within the shutdown deadline with a call in flight."""
    from conftest import _free_port

    from proxy.bench.harness import child_server
    from proxy.bench.limits import exited

    port = _free_port()
    env = {
        "MEMPROXY_DATA_DIR": str(tmp_path),
        "MEMPROXY_EMBED_MODEL_PATH": str(memory_model_dir),
        "MEMPROXY_WORKER_IN_PROXY": "false",
        "MEMPROXY_MAX_HEADER_BYTES": "4096",
        "MEMPROXY_HEADER_TIMEOUT": "1",
        "MEMPROXY_SHUTDOWN_TIMEOUT": "1",
    }
    upstream = emulator_server.url + "/v1"
    with child_server(["serve", "--port", str(port), "--upstream", upstream], port, env=env) as child:
        url = f"http://127.0.0.1:{port}"
        response = httpx.get(url + "/v1/models", headers={"x-big": "v" * 5000})
        assert response.status_code == 431

        sock = connect(url)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\n")
        answer = read_all(sock, time.monotonic())
        sock.close()
        assert answer.status == 408 and answer.closed_after < 2.0

        answers: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(
                httpx.get(url + "/v1/models", headers={"x-emulator-fault": "delay=5"}, timeout=30)
            )
        )
        waiting.start()
        time.sleep(0.5)
        started = time.monotonic()
        os.kill(child.pid, signal.SIGTERM)
        waiting.join(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not exited(child.pid):
            time.sleep(0.05)
        stopped = time.monotonic() - started
    assert stopped < 1 + 2.0, f"stopping took {stopped:.1f} s"
    assert answers and answers[0].status_code == 503
    assert answers[0].json()["error"]["code"] == "shutting_down"
    assert answers[0].headers["x-should-retry"] == "true"  # a GET: safe to send again
