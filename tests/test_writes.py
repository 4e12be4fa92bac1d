"""A client connection's writes of one loop turn go out together (proxy.writes): nothing lost, nothing reordered.

Over raw sockets to a real proxy (the emulator upstream): an answer on a connection the proxy closes
arrives whole, and pipelined requests are answered whole and in order.
"""

from __future__ import annotations

import json
import socket

import pytest

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}).encode()


def chat_request(*, close: bool = False) -> bytes:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer sk-test\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(CHAT)
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + CHAT


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def responses(data: bytes) -> list[tuple[int, dict]]:
    """Each response's status and JSON body, in the order they came (Content-Length framing)."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(headers[b"content-length"])
        found.append((int(lines[0].split(b" ")[1]), json.loads(rest[:length])))
        data = rest[length:]
    return found


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy()


def test_an_answer_on_a_connection_the_proxy_closes_arrives_whole(proxy, emulator) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(chat_request(close=True))
        [(status, body)] = responses(read_until_closed(sock))
    assert status == 200
    assert body["choices"][0]["message"]["content"]


def test_pipelined_requests_are_answered_whole_and_in_order(proxy, emulator) -> None:
    with connect(proxy.url) as sock:
        sock.sendall(
            chat_request()
            + b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n"
            + b"GET /v1/models/nope HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer sk-test\r\n"
            + b"connection: close\r\n\r\n"
        )
        answers = responses(read_until_closed(sock))
    assert [status for status, _ in answers] == [200, 200, 404]
    assert answers[0][1]["object"] == "chat.completion"
    assert answers[1][1]["status"] == "ok"
