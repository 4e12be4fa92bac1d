"""A small client for the emulator's control endpoints, for our tests and for users' own CI.

with serve() as emulator:
    client = openai.OpenAI(base_url=emulator.base_url, api_key="sk-test")
    emulator.fault(path="/chat/completions", status=500)
    ...
    assert emulator.requests()[-1]["body"]["model"] == "gpt-4o-mini"
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx2

from proxy.server import ServerThread


class Emulator:
    """Handle on a running emulator at ``url`` (no ``/v1``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.base_url = self.url + "/v1"
        self._http = httpx2.Client(base_url=self.url, timeout=10)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Recorded ``/v1`` requests, oldest first; only those whose path starts with ``path`` if given."""
        entries = self._call("GET", "/_emulator/requests")
        return [e for e in entries if path is None or e["path"].startswith(path)]

    def clear_requests(self) -> None:
        self._call("DELETE", "/_emulator/requests")

    def fault(self, **options: Any) -> dict[str, Any]:
        """Register a fault (options as in ``control.py``); returns it with its id."""
        return self._call("POST", "/_emulator/faults", json=options)[0]

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/faults")

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")

    def reset(self) -> None:
        """Forget recordings, faults and every stored object."""
        self._call("POST", "/_emulator/reset")


@contextlib.contextmanager
def serve(**app_options: Any) -> Iterator[Emulator]:
    """Run a fresh emulator on a free port for the duration of the block."""
    from proxy.emulator import create_app

    with ServerThread(create_app(**app_options)) as server:
        emulator = Emulator(server.url)
        try:
            yield emulator
        finally:
            emulator.close()
