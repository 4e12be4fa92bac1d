"""The upstream client's network backend on asyncio transports (proxy/netio.py).

Every forwarding test already runs over it (under uvloop in the proxy's server thread); these
tests hold it to what the default backend gave: TLS with certificate checks, timeouts and
refusals as httpx2's errors, a keep-alive connection the upstream closed replaced, and bounded
buffers both ways for bodies larger than any buffer.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.netio import READ_HIGH, AsyncioTransport
from proxy.server import ServerThread

LIMITS = httpx2.Limits(max_connections=10, max_keepalive_connections=10)
BIG = 16 * 1024 * 1024
CHUNK = 64 * 1024


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, signed by its own key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memproxy test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory):
    """The emulator served over HTTPS with a self-signed certificate: (base URL, the certificate's file)."""
    from proxy.emulator import create_app

    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    with ServerThread(create_app(), ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        yield f"https://localhost:{server.port}/v1", cert


def _chat(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)


def test_the_proxy_forwards_to_a_tls_upstream_whose_ca_it_is_given(make_proxy, tls_emulator) -> None:
    upstream, cert = tls_emulator
    proxy = make_proxy(upstream_url=upstream, upstream_ca_file=cert)
    client = _chat(proxy.url + "/v1")
    messages = [{"role": "user", "content": "hello over TLS"}]
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert "hello over TLS" in (answer.choices[0].message.content or "")
    streamed = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert "hello over TLS" in text


def test_an_upstream_certificate_that_chains_to_no_trusted_ca_is_refused(make_proxy, tls_emulator) -> None:
    upstream, _ = tls_emulator
    proxy = make_proxy(upstream_url=upstream)  # the public CAs only: the self-signed certificate fails
    client = _chat(proxy.url + "/v1")
    with pytest.raises(openai.APIStatusError) as failure:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert failure.value.status_code == 502
    assert failure.value.response.json()["error"]["code"] == "upstream_unreachable"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """An asyncio TCP server running ``handler`` per connection: (its URL, a list counting connections)."""
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/", connections


async def _read_request(reader: asyncio.StreamReader) -> int:
    """Read one request's head and body; returns the body's length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return len(body)


def _response(body: bytes, *, close: bool = False) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n%s" % (len(body), connection, body)


def _client(**timeouts: float) -> httpx2.AsyncClient:
    timeout = httpx2.Timeout(5.0, **timeouts)
    return httpx2.AsyncClient(transport=AsyncioTransport(LIMITS), timeout=timeout)


async def test_a_keepalive_connection_the_upstream_closed_is_replaced_not_reused() -> None:
    async def answer_once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_response(b"one"))  # says keep-alive, then closes while the client's pool holds it
        await writer.drain()

    async with raw_server(answer_once_then_hang_up) as (url, connections), _client() as client:
        assert (await client.get(url)).content == b"one"
        await asyncio.sleep(0.1)  # the close reaches the client's loop
        assert (await client.get(url)).content == b"one"
    assert len(connections) == 2


async def test_a_silent_upstream_is_a_read_timeout_and_a_closed_port_a_connect_error() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async with raw_server(never_answer) as (url, _), _client(read=0.2) as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(url)
    async with _client() as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(url)  # the server above has stopped listening


async def test_a_large_download_read_slowly_is_intact_and_never_buffered_whole() -> None:
    payload = bytes(range(256)) * (BIG // 256)

    async def send_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
        for start in range(0, len(payload), CHUNK):
            writer.write(payload[start : start + CHUNK])
            await writer.drain()

    digest, most_held = hashlib.sha256(), 0
    async with raw_server(send_big) as (url, _), _client() as client, client.stream("GET", url) as response:
        protocol = response.extensions["network_stream"]._protocol
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            most_held = max(most_held, protocol.buffered)
            await asyncio.sleep(0.0005)  # a slow client downstream
    assert digest.digest() == hashlib.sha256(payload).digest()
    # Reading stops at READ_HIGH; one more receive (at most 256 KiB under uvloop) may land on top.
    assert most_held <= READ_HIGH + 256 * 1024


async def test_a_large_upload_to_a_slow_upstream_arrives_whole() -> None:
    received: list[int] = []

    async def read_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        digest = hashlib.sha256()
        while length:
            chunk = await reader.read(min(length, CHUNK))
            digest.update(chunk)
            length -= len(chunk)
            await asyncio.sleep(0.0005)
        received.append(1)
        writer.write(_response(digest.hexdigest().encode(), close=True))
        await writer.drain()

    payload = bytes(reversed(range(256))) * (BIG // 256)
    async with raw_server(read_slowly) as (url, _), _client() as client:
        answer = await client.post(url, content=payload)
    assert answer.text == hashlib.sha256(payload).hexdigest()
    assert received == [1]
