"""Shared fixtures. Servers run for real on free ports (proxy.server.ServerThread)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

import pytest

from proxy.owner import Owner

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2-onnx"
# No network here: a model missing locally must fail at once, not after hub time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def make_proxy(tmp_path_factory, emulator_server, local_embedder, memory_model_dir):
    """Start proxies on free ports: emulator upstream, fresh data dir, the session's embedding model.

    ``make_proxy(**settings)`` returns a started ServerThread (its ``.app`` is the Starlette app);
    every proxy stops at the end of the session.
    """
    from proxy.app import create_app
    from proxy.config import Settings
    from proxy.server import ServerThread

    started = []

    def make(**overrides):
        values = {
            "upstream_url": emulator_server.url + "/v1",
            "data_dir": tmp_path_factory.mktemp("proxy"),
            "embed_model_path": memory_model_dir,
            # Off unless a test wants it: a worker outliving its test would call the shared emulator.
            "worker_in_proxy": False,
            # Tests assert what recall finds, not how fast: a busy CI machine must not turn a recall
            # into a timeout (tests of the deadline set their own).
            "memory_recall_deadline_ms": 5000,
            **overrides,
        }
        shared = local_embedder if values.get("embedder", "local") == "local" else None
        app = create_app(Settings(**values), embedder=shared)
        server = ServerThread(app, server_header=False, date_header=False).start()
        deadline = time.monotonic() + 30  # the memory layer opens in the background: wait for it
        while app.state.runtime.problems.get("memory") == "starting" and time.monotonic() < deadline:
            time.sleep(0.01)
        server.app = app
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def passthrough(make_proxy):
    """A proxy passing Assistants through to the upstream (one per test module)."""
    return make_proxy(assistants="passthrough")


@pytest.fixture(scope="module")
def bridge(make_proxy):
    """A proxy serving Assistants itself, on Responses + Conversations (one per test module)."""
    return make_proxy(assistants="bridge")


@pytest.fixture
def user(request) -> str:
    """A subject of this test only."""
    return f"user-{request.node.name}"


FAST_RECONNECT = {"reconnect_backoff": 0.1, "reconnect_backoff_cap": 0.5, "worker_poll_interval": 0.05}
"""Settings for tests that break a part: reopen it, and poll the queue, within a fraction of a second."""


def learning_proxy_on_redis(make_proxy, redis_url: str, name: str):
    """A proxy on a test's own redis-server that learns in process (an LLM extractor behind the emulator),
    with short job leases and fast reconnects: what the tests that kill Redis under traffic start."""
    return make_proxy(
        redis_url=redis_url,
        secret=f"{name}-secret",
        single_replica=True,
        redis_prefix=f"{name}-{uuid.uuid4().hex[:8]}",
        worker_in_proxy=True,
        llm_api_key="sk-operator-extraction",
        job_lease_seconds=2.0,
        **FAST_RECONNECT,
    )


# --- state store (proxy/state) -----------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def redis_server(port: int | None = None, data_dir: Path | None = None):
    """A real ``redis-server``; yields (url, process), stopped after.

    On a free port unless ``port`` is given (start another on the same port to simulate a restart),
    persistence off unless ``data_dir`` is given: then an append-only file there, fsynced per write,
    so a server killed and started again on the same ``data_dir`` keeps every acknowledged write.
    """
    import shutil
    import subprocess
    import time

    import redis

    from proxy.server import stop_process

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not on PATH (apt-get install redis-server): Redis backend tests need it")
    port = port or _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"]
    if data_dir is None:
        args += ["--appendonly", "no"]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                stderr = proc.communicate()[1].decode(errors="replace")
                pytest.fail(f"redis-server did not answer PING on port {port}: {stderr[-500:]}")
            time.sleep(0.05)
    client.close()
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout=5)


def kill(process) -> None:
    """An outage: SIGKILL, no goodbye (what persistence has is what survives)."""
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def redis_server_url():
    """One real ``redis-server`` for the session."""
    with redis_server() as (url, _):
        yield url


@pytest.fixture
def state_job_policy():
    """Short leases and backoffs, so Redis tests (real time) stay fast; override in a module if needed."""
    from proxy.state import JobPolicy

    return JobPolicy(max_attempts=3, backoff_base=0.2, backoff_cap=0.4, lease_seconds=0.2, idempotency_retention=0.3)


@pytest.fixture(params=["sqlite", "redis"])
async def state_factory(request, tmp_path, state_job_policy):
    """Opens :class:`proxy.state.State` instances on one shared store, as separate replicas would.

    sqlite: one file in tmp_path and a shared ManualClock (move it, don't sleep); redis: the session
    server with a key prefix unique to the test, real time. Every instance is closed at teardown.
    """
    import uuid

    from proxy.state import ManualClock
    from proxy.state.redis import RedisState
    from proxy.state.sqlite import SqliteState

    url = request.getfixturevalue("redis_server_url") if request.param == "redis" else None
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    clock = ManualClock()
    opened = []

    async def open_state(policy=None):
        policy = policy or state_job_policy
        if url is None:
            state = await SqliteState.open(tmp_path / "state.sqlite3", clock=clock, policy=policy)
        else:
            state = await RedisState.connect(url, prefix=prefix, policy=policy)
        opened.append(state)
        return state

    yield open_state
    for state in opened:
        await state.close()


@pytest.fixture
async def state(state_factory):
    """A fresh state store, once per backend (sqlite, redis)."""
    return await state_factory()


# --- memory (proxy/memory) ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def memory_model_dir() -> Path:
    """The offline embedding model: ``MEMPROXY_EMBED_MODEL_PATH`` if set, else the shared copy."""
    import os

    path = Path(os.environ.get("MEMPROXY_EMBED_MODEL_PATH") or MODEL_DIR).expanduser()
    if not (path / "model.onnx").exists():
        pytest.skip(
            f"offline embedding model not found at {path} (set MEMPROXY_EMBED_MODEL_PATH); no network to fetch it"
        )
    return path


@pytest.fixture(scope="session")
def local_embedder(memory_model_dir):
    """One fastembed model for the whole session (loading costs ~0.4 s)."""
    from proxy.memory.embed import LocalEmbedder

    embedder = LocalEmbedder("sentence-transformers/all-MiniLM-L6-v2", model_path=memory_model_dir)
    yield embedder
    embedder.close()


# --- emulator (proxy/emulator) -----------------------------------------------------------------


def settings_without_model(data_dir: Path):
    """A proxy's settings whose embedding model cannot load (no such directory, no upstream to reach):
    memory stays down and is retried in the background, once a minute."""
    from proxy.config import Settings

    return Settings(
        upstream_url="http://127.0.0.1:9/v1",
        assistants="passthrough",
        data_dir=data_dir,
        embed_model_path=data_dir / "no-model-here",
        reconnect_backoff=60,
    )


@pytest.fixture(scope="session")
def emulator_server():
    """One emulator (``proxy.emulator.create_app()``) on a free port for the whole session."""
    from proxy.emulator import create_app
    from proxy.server import ServerThread

    with ServerThread(create_app()) as server:
        yield server


@pytest.fixture(scope="session")
def emulator_session(emulator_server):
    """Control handle and openai client for the session emulator, made once (clients cost ~30 ms each)."""
    import openai

    from proxy.emulator.testing import Emulator

    handle = Emulator(emulator_server.url)
    client = openai.OpenAI(base_url=handle.base_url, api_key="sk-test", max_retries=0)
    yield handle, client
    client.close()
    handle.close()


@pytest.fixture
def emulator(emulator_session):
    """Control handle on the session emulator, reset (no recordings, faults or objects) for this test."""
    handle, _ = emulator_session
    handle.reset()
    return handle


@pytest.fixture
def emulator_openai(emulator, emulator_session):
    """The real openai SDK pointed at the reset session emulator; no retries, so faults surface as errors."""
    return emulator_session[1]


# --- assistants (proxy/assistants) -------------------------------------------------------------

_ASSISTANTS_SCHEMAS = [
    # (method, path regex under /v1, schema of a 2xx JSON body); first match wins
    ("GET", r"/assistants", "ListAssistantsResponse"),
    ("DELETE", r"/assistants/[^/]+", "DeleteAssistantResponse"),
    (None, r"/assistants(/[^/]+)?", "AssistantObject"),
    ("POST", r"/threads/runs", "RunObject"),
    ("DELETE", r"/threads/[^/]+", "DeleteThreadResponse"),
    (None, r"/threads(/[^/]+)?", "ThreadObject"),
    ("GET", r"/threads/[^/]+/messages", "ListMessagesResponse"),
    ("DELETE", r"/threads/[^/]+/messages/[^/]+", "DeleteMessageResponse"),
    (None, r"/threads/[^/]+/messages(/[^/]+)?", "MessageObject"),
    ("GET", r"/threads/[^/]+/runs", "ListRunsResponse"),
    ("GET", r"/threads/[^/]+/runs/[^/]+/steps", "ListRunStepsResponse"),
    ("GET", r"/threads/[^/]+/runs/[^/]+/steps/[^/]+", "RunStepObject"),
    (None, r"/threads/(runs|[^/]+/runs(/[^/]+(/cancel|/submit_tool_outputs)?)?)", "RunObject"),
]


def assistants_schema(method: str, path: str) -> str:
    """The spec schema of a successful JSON answer to an Assistants call (``path`` below /v1)."""
    import re

    for want, pattern, name in _ASSISTANTS_SCHEMAS:
        if (want is None or want == method) and re.fullmatch(pattern, path):
            return name
    raise AssertionError(f"no schema known for {method} {path}")


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """``(event, data)`` pairs of a complete SSE body."""
    events, name, data = [], None, []
    for line in body.decode().splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            events.append((name, "\n".join(data)))
            name, data = None, []
    return events


def validate_assistants_exchange(method: str, path: str, status: int, content_type: str, body: bytes) -> int:
    """Check one recorded Assistants answer against the spec; returns how many objects were checked.

    Errors must be OpenAI error envelopes; a stream must be spec events ending with ``done``.
    Empty list pages carry ``first_id``/``last_id`` null as OpenAI sends them (the spec says string).
    """
    import json

    from spec import validate

    if status >= 400:
        validate(json.loads(body), "ErrorResponse")
        return 1
    if content_type.startswith("text/event-stream"):
        events = sse_events(body)
        assert events and events[-1] == ("done", "[DONE]"), f"stream did not end with done: {events[-1:]}"
        for name, data in events:
            validate({"event": name, "data": data if data == "[DONE]" else json.loads(data)}, "AssistantStreamEvent")
        return len(events)
    payload = json.loads(body)
    if payload.get("object") == "list" and not payload["data"]:
        payload = {**payload, "first_id": "", "last_id": ""}
    validate(payload, assistants_schema(method, path))
    return 1


@pytest.fixture
def assistants_client():
    """``make(base_url, api_key=None)``: an openai client whose every Assistants answer is checked
    against the OpenAPI spec at teardown (JSON bodies, errors, each stream event).

    Each client gets its own API key unless given one, so in bridge mode it is its own tenant and
    sees none of the other tests' assistants.
    """
    import uuid

    import httpx2
    import openai

    recorded: list[tuple[str, str, int, str, bytearray]] = []

    class Tee(httpx2.SyncByteStream):
        def __init__(self, stream, sink: bytearray) -> None:
            self.stream, self.sink = stream, sink

        def __iter__(self):
            for chunk in self.stream:
                self.sink.extend(chunk)
                yield chunk

        def close(self) -> None:
            self.stream.close()

    class Recording(httpx2.HTTPTransport):
        def handle_request(self, request):
            response = super().handle_request(request)
            path = request.url.path.split("/v1", 1)[-1]
            if path.startswith(("/assistants", "/threads")):
                sink = bytearray()
                recorded.append(
                    (request.method, path, response.status_code, response.headers.get("content-type", ""), sink)
                )
                response.stream = Tee(response.stream, sink)
            return response

    clients = []

    def make(base_url: str, api_key: str | None = None) -> openai.OpenAI:
        http = httpx2.Client(transport=Recording(), timeout=20)
        client = openai.OpenAI(
            base_url=base_url, api_key=api_key or f"sk-test-{uuid.uuid4().hex}", max_retries=0, http_client=http
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    checked = sum(validate_assistants_exchange(*exchange[:4], bytes(exchange[4])) for exchange in recorded)
    assert not recorded or checked, "nothing was validated"


# --- replay (tests/replay.py): real recorded OpenAI traffic as the upstream ---------------------------


@pytest.fixture(scope="session")
def replay_server():
    """One replay upstream for the session (the emulator behind it for unrecorded Conversations calls).

    Skips when the recordings are not there: they are CI fixtures at ``../shared/data/recorded-openai/``.
    """
    from replay import RECORDINGS, Replay

    from proxy.emulator import create_app
    from proxy.server import ServerThread

    if not any(RECORDINGS.glob("*.yaml")):
        pytest.skip(
            f"recorded OpenAI traffic not found at {RECORDINGS} (../shared/data/recorded-openai/ beside the repo)"
        )
    app = Replay(fallback=create_app())
    with ServerThread(app) as server:
        app.url = server.url
        yield app


@pytest.fixture
def replay(replay_server):
    """The session's replay upstream, emptied for this test: ``replay.play(cassette(name))`` loads answers."""
    replay_server.reset()
    yield replay_server
    assert not replay_server.misses, f"requests nothing recorded answered: {replay_server.misses}"


TEST_SECRET = b"test-secret"


def owner(tenant: str, subject: str) -> Owner:
    """The owner of ``subject`` in ``tenant``, keyed with the tests' secret."""
    return Owner.of(TEST_SECRET, tenant, subject)
