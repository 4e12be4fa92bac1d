"""Run an ASGI app under uvicorn: the client limits every server gets, and a background thread.

Tests and ``memproxy bench`` need real servers on free ports without a subprocess per server;
one small class serves both, and :func:`server_options` gives it and ``memproxy serve`` the same
limits, so the way a server is started is the same everywhere.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp

from proxy.config import Settings
from proxy.limits import protocol_class


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options enforcing the client limits of ``settings`` (README, "Limits").

    The header deadline and byte bound live in the HTTP protocol (:mod:`proxy.limits`); uvicorn's
    own knobs do the rest. ``h11_max_incomplete_event_size`` bounds headers should ``http="h11"``
    be chosen instead (answered 400 there, not 431).
    """
    return {
        "http": protocol_class(settings.max_header_bytes, settings.header_timeout),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.client_keepalive_timeout,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "limit_concurrency": settings.max_client_connections,
    }


class ServerThread:
    """``app`` served on a thread, with the limits of ``settings`` (else the app's own, else defaults)."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("log_level", "warning")
        options.setdefault("lifespan", "on")
        settings = settings or getattr(getattr(app, "state", None), "settings", None) or Settings()
        options = {**server_options(settings), **options}
        self.config = uvicorn.Config(app, host=host, port=port, **options)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.config.host}:{self.config.port} did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=(self.config.timeout_graceful_shutdown or 0) + 10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Ask a child server to stop, and kill it if it has not within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
