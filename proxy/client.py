"""A small Python client for the memory API, sync and async.

    from proxy.client import Memory
    user = Memory("http://localhost:8080", api_key=os.environ["OPENAI_API_KEY"]).user("u42")
    user.remember("Prefers metric units")
    print(user.context("How far is it?")["text"])

Each call is described once (:class:`Call`) and sent by either transport, so the sync and async
clients cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import httpx2


class MemoryAPIError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _unwrap(response: httpx2.Response) -> Any:
    body = response.json()
    if response.status_code >= 400:
        raise MemoryAPIError(response.status_code, body)
    return body


class _Calls:
    """What each operation sends; the transports below only execute it."""

    def __init__(self, subject: str) -> None:
        self.prefix = f"/memory/v1/users/{quote(subject, safe='')}"

    def remember(
        self,
        text: str,
        *,
        kind: str = "fact",
        ttl_seconds: float | None = None,
        metadata: dict[str, Any] | None = None,
        assistant_id: str | None = None,
    ) -> Call:
        payload = {
            "text": text,
            "kind": kind,
            "ttl_seconds": ttl_seconds,
            "metadata": metadata or {},
            "assistant_id": assistant_id,
        }
        return Call("POST", self.prefix + "/memories", payload)

    def recall(self, query: str, *, top_k: int | None = None, min_confidence: float | None = None) -> Call:
        return Call("POST", self.prefix + "/recall", {"query": query, "top_k": top_k, "min_confidence": min_confidence})

    def context(self, query: str, *, top_k: int | None = None) -> Call:
        return Call("POST", self.prefix + "/context", {"query": query, "top_k": top_k})

    def list(self, *, cursor: str | None = None, limit: int = 50, include_deleted: bool = False) -> Call:
        params = {"limit": limit, "include_deleted": str(include_deleted).lower()}
        return Call("GET", self.prefix + "/memories", params={**params, **({"cursor": cursor} if cursor else {})})

    def get(self, memory_id: str) -> Call:
        return Call("GET", f"{self.prefix}/memories/{memory_id}")

    def update(self, memory_id: str, text: str, *, reason: str | None = None) -> Call:
        return Call("PATCH", f"{self.prefix}/memories/{memory_id}", {"text": text, "reason": reason})

    def delete(self, memory_id: str, *, reason: str | None = None) -> Call:
        return Call("DELETE", f"{self.prefix}/memories/{memory_id}", params={"reason": reason} if reason else {})

    def forget(self) -> Call:
        return Call("DELETE", self.prefix)

    def export(self) -> Call:
        return Call("GET", self.prefix + "/export")


OPERATIONS = ("remember", "recall", "context", "list", "get", "update", "delete", "forget", "export")


class UserMemory:
    """One subject's memories, over a blocking connection."""

    def __init__(self, http: httpx2.Client, subject: str) -> None:
        self._http, self._calls = http, _Calls(subject)

    def __getattr__(self, name: str) -> Any:
        if name not in OPERATIONS:
            raise AttributeError(name)
        build = getattr(self._calls, name)

        def send(*args: Any, **kwargs: Any) -> Any:
            call = build(*args, **kwargs)
            return _unwrap(self._http.request(call.method, call.path, json=call.json, params=call.params))

        return send


class AsyncUserMemory:
    """One subject's memories, over an asyncio connection."""

    def __init__(self, http: httpx2.AsyncClient, subject: str) -> None:
        self._http, self._calls = http, _Calls(subject)

    def __getattr__(self, name: str) -> Any:
        if name not in OPERATIONS:
            raise AttributeError(name)
        build = getattr(self._calls, name)

        async def send(*args: Any, **kwargs: Any) -> Any:
            call = build(*args, **kwargs)
            return _unwrap(await self._http.request(call.method, call.path, json=call.json, params=call.params))

        return send


def _headers(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


class Memory:
    """Entry point: ``Memory(base_url, api_key).user("u42")``; base_url is the proxy, without /v1."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx2.Client(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def user(self, subject: str) -> UserMemory:
        return UserMemory(self._http, subject)

    def audit(self) -> Any:
        return _unwrap(self._http.get("/memory/v1/audit"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMemory:
    """``async with AsyncMemory(base_url, api_key) as memory: await memory.user("u42").recall(...)``."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx2.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def user(self, subject: str) -> AsyncUserMemory:
        return AsyncUserMemory(self._http, subject)

    async def audit(self) -> Any:
        return _unwrap(await self._http.get("/memory/v1/audit"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
