"""The GDPR commands against a running proxy, through its memory API.

Each call answers the JSON the local task (:mod:`proxy.cli.tasks`) answers, so a command prints the
same whichever way it went. Credentials: ``--api-key`` (the application's key: its tenant), or the
proxy's admin token (``MEMPROXY_ADMIN_TOKEN``) with ``--tenant``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx2

from proxy.errors import MemproxyError

TIMEOUT = httpx2.Timeout(10.0, read=600.0)  # an erasure or a migration may take a while upstream


class CommandError(MemproxyError):
    """A command could not be carried out; its message is the one line the operator sees."""


class Remote:
    def __init__(self, url: str, *, api_key: str | None, tenant: str | None, admin_token: str | None) -> None:
        self.url = url.rstrip("/")
        if tenant and admin_token:
            self.headers = {"authorization": f"Bearer {admin_token}", "x-memory-tenant": tenant}
        elif api_key:
            self.headers = {"authorization": f"Bearer {api_key}"}
        elif admin_token:
            self.headers = {"authorization": f"Bearer {admin_token}"}
        else:
            raise CommandError(
                "name the tenant: --api-key K (the application's key), or --tenant T with MEMPROXY_ADMIN_TOKEN"
            )

    def _call(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        try:
            response = httpx2.request(
                method, self.url + "/memory/v1" + path, headers=self.headers, timeout=TIMEOUT, **options
            )
        except httpx2.HTTPError as exc:
            raise CommandError(f"the proxy at {self.url} did not answer ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            raise CommandError(f"the proxy at {self.url} answered {response.status_code}: {message or 'no detail'}")
        if not isinstance(body, dict):
            raise CommandError(f"the proxy at {self.url} answered something that is not a JSON object")
        return body

    @staticmethod
    def _user(user: str) -> str:
        return "/users/" + quote(user, safe="")

    def forget(self, user: str, *, keep_upstream: bool) -> dict[str, Any]:
        params = {"keep_upstream": "true" if keep_upstream else "false"}
        return self._call("DELETE", self._user(user), params=params)

    def export(self, user: str) -> dict[str, Any]:
        return self._call("GET", self._user(user) + "/export")

    def migrate(self, user: str, threads: list[str], *, seen: bool) -> dict[str, Any]:
        return self._call("POST", self._user(user) + "/migrate", json={"threads": threads, "seen": seen})

    def verify(self, head: str | None) -> dict[str, Any]:
        return self._call("GET", "/audit/verify", params={"head": head} if head else {})

    def head(self) -> dict[str, Any]:
        found = self._call("GET", "/audit", params={"limit": 1})
        return {"tenant": found.get("tenant"), "head": _head_text(found.get("head"))}


def _head_text(head: Any) -> str | None:
    return f"{head['seq']}:{head['hash']}" if isinstance(head, dict) else None
