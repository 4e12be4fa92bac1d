"""What of a client's headers goes upstream: never the proxy's own, and never a 502 for a client's odd one.

The ``X-Memory*`` headers steer the proxy (``X-Memory: off``, ``X-Memory-User``, the admin's
``X-Memory-Tenant``) and stay in it, whatever their suffix or case, as does the configured user
header. A header the client sent with whitespace around its value (``Authorization: Bearer ``: an
SDK with an empty key) goes up trimmed for the upstream to judge, never as a proxy 502.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

PRIVATE = {
    "X-Memory-Tenant": "t_someone_else",
    "X-Memory-Foo": "1",
    "x-MEMORY-bar": "2",
    "X-Memory-User": "alice",
    "X-Memory": "on",
    "X-Memoryish": "3",
    "X-End-User": "bob",  # the configured MEMPROXY_MEMORY_USER_HEADER
}


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy(memory_user_header="X-End-User")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),  # plain forwarding
        ("POST", "/v1/chat/completions", CHAT),  # a memory hook
        ("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hello"}),
        ("POST", "/v1/threads", {}),  # Assistants passthrough
    ],
)
def test_no_x_memory_header_goes_upstream(proxy, emulator, method, path, body) -> None:
    headers = {"authorization": "Bearer sk-test", "x-kept": "yes", **PRIVATE}
    response = httpx.request(method, proxy.url + path, json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    received = emulator.requests(path)[-1]["headers"]
    assert received["x-kept"] == "yes" and received["authorization"] == "Bearer sk-test"
    leaked = [name for name in received if name.startswith("x-memory") or name == "x-end-user"]
    assert not leaked, f"sent upstream: {leaked}"


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as written (an HTTP client would trim or refuse the header); status and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize("value", [b"Bearer ", b"Bearer \t ", b"  Bearer"])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions"])
def test_an_empty_bearer_goes_upstream_to_be_judged_never_a_502(proxy, emulator, value, path) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    method = b"GET" if path == "/v1/models" else b"POST"
    request = (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
        b"Authorization: " + value + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) if method == b"POST" else 0)
    ) + (body if method == b"POST" else b"")
    status, _ = raw_request(proxy.url, request)
    assert status == 200  # the emulator takes any key; the real API answers 401 to a bare "Bearer"
    assert emulator.requests(path)[-1]["headers"]["authorization"] == "Bearer"


def test_an_empty_bearer_in_the_bridge_is_the_401_it_is(make_proxy, emulator) -> None:
    """The bridge serves Assistants itself: no key, no tenant, an OpenAI-shaped 401 (never a 502)."""
    bridge = make_proxy(assistants="bridge")
    request = (
        b"POST /v1/threads HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\nAuthorization: Bearer \r\n"
        b"OpenAI-Beta: assistants=v2\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    status, body = raw_request(bridge.url, request)
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    assert not emulator.requests()


def test_an_upstream_cookie_reaches_its_client_and_never_another_request(make_proxy, emulator) -> None:
    """The shared upstream client keeps no cookie jar: a Set-Cookie answered to tenant A (a load balancer's
    affinity cookie, say) is relayed to A, and never sent upstream with B's requests, or with A's next one."""
    proxy = make_proxy(upstream_url=emulator.base_url.replace("127.0.0.1", "localhost"))  # a name, as upstreams have
    emulator.clear_requests()
    first = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": "Bearer sk-tenant-a", "x-emulator-fault": "header.set-cookie=__cf_bm=tenant-a"},
    )
    assert first.status_code == 200 and first.headers["set-cookie"] == "__cf_bm=tenant-a"
    # Python's cookie jar never returns a cookie to "localhost" or an IP address, so what would go to a named
    # upstream (api.openai.com) is read from the shared client's jar: it must hold nothing
    assert len(proxy.app.state.runtime.http.cookies.jar) == 0
    for key in ("sk-tenant-b", "sk-tenant-a"):
        assert httpx.get(f"{proxy.url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    later = emulator.requests("/v1/models")[-2:]
    assert [entry["headers"].get("cookie") for entry in later] == [None, None]
