"""What the engine needs from a Responses + Conversations API, and the HTTP implementation of it.

The engine never speaks HTTP itself: the bridge gives it :class:`HttpUpstream` (the proxy's one
shared client, the caller's own credentials), the emulator an in-process adapter over its own
Responses engine (``proxy.emulator.assistants``). Failures of either become :class:`UpstreamError`,
which the routes relay with the upstream's status and error body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import httpx2

from proxy import tracing
from proxy.errors import MemproxyError, envelope
from proxy.ids import upstream_path

log = logging.getLogger("memproxy.assistants")

PASSED_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")
ITEMS_PER_CALL = 20
"""The Conversations API accepts at most 20 items per create call."""


class UpstreamError(MemproxyError):
    """The upstream refused or failed; ``body`` is an OpenAI error envelope, relayed to the client as it came.

    Not an :class:`~proxy.errors.OpenAIError`: memproxy did not word it, and the upstream's body may
    carry more than the four envelope fields.
    """

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body


class Upstream(Protocol):
    """Responses and Conversations calls, each answering the API's JSON object."""

    async def create_response(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def stream_response(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Open a streamed response (errors raise here, before any event) and iterate its events."""
        ...

    async def retrieve_response(self, response_id: str) -> dict[str, Any]: ...

    async def cancel_response(self, response_id: str) -> dict[str, Any]: ...

    async def create_conversation(self, metadata: dict[str, str]) -> dict[str, Any]: ...

    async def retrieve_conversation(self, conversation_id: str) -> dict[str, Any]: ...

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str]) -> dict[str, Any]: ...

    async def delete_conversation(self, conversation_id: str) -> None: ...

    async def create_items(self, conversation_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append items (at most :data:`ITEMS_PER_CALL`); the created items with their ids."""
        ...

    async def list_items(
        self, conversation_id: str, *, limit: int, order: str, after: str | None
    ) -> dict[str, Any]: ...

    async def retrieve_item(self, conversation_id: str, item_id: str) -> dict[str, Any]: ...

    async def delete_item(self, conversation_id: str, item_id: str) -> None: ...


class HttpUpstream:
    """:class:`Upstream` over HTTP with the caller's credentials (bridge mode)."""

    def __init__(self, client: httpx2.AsyncClient, base_url: str, headers: Mapping[str, str]) -> None:
        self.client = client
        self.base = base_url.rstrip("/")
        # trimmed: whitespace around a value is no part of it (RFC 9110 5.5), and the client refuses to
        # send it; ``Bearer `` goes up as ``Bearer`` for the upstream to judge, never a 502
        self.headers = {name: headers[name].strip(" \t") for name in PASSED_HEADERS if name in headers}

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            with tracing.span("memproxy.upstream", {"http.request.method": method}, client=True):
                headers = {**self.headers, **tracing.trace_headers()}  # W3C traceparent while tracing
                response = await self.client.request(
                    method, self.base + path, json=body, params=params, headers=headers
                )
        except httpx2.HTTPError as exc:
            log.warning("upstream %s %s failed: %s", method, path.split("/")[1], type(exc).__name__)
            raise _transport_error(exc) from None
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, _error_json(response.content, response.status_code))
        return response.json()

    async def create_response(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/responses", body)

    async def stream_response(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            with tracing.span("memproxy.upstream", {"http.request.method": "POST"}, client=True):
                headers = {**self.headers, **tracing.trace_headers()}  # W3C traceparent while tracing
                request = self.client.build_request(
                    "POST", self.base + "/responses", json={**body, "stream": True}, headers=headers
                )
                response = await self.client.send(request, stream=True)
        except httpx2.HTTPError as exc:
            raise _transport_error(exc) from None
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            raise UpstreamError(response.status_code, _error_json(content, response.status_code))
        return _sse_events(response)

    async def retrieve_response(self, response_id: str) -> dict[str, Any]:
        return await self._call("GET", upstream_path("/responses/{response_id}", response_id=response_id))

    async def cancel_response(self, response_id: str) -> dict[str, Any]:
        return await self._call("POST", upstream_path("/responses/{response_id}/cancel", response_id=response_id))

    async def create_conversation(self, metadata: dict[str, str]) -> dict[str, Any]:
        return await self._call("POST", "/conversations", {"metadata": metadata})

    async def retrieve_conversation(self, conversation_id: str) -> dict[str, Any]:
        return await self._call(
            "GET", upstream_path("/conversations/{conversation_id}", conversation_id=conversation_id)
        )

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        return await self._call(
            "POST",
            upstream_path("/conversations/{conversation_id}", conversation_id=conversation_id),
            {"metadata": metadata},
        )

    async def delete_conversation(self, conversation_id: str) -> None:
        await self._call("DELETE", upstream_path("/conversations/{conversation_id}", conversation_id=conversation_id))

    async def create_items(self, conversation_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        page = await self._call(
            "POST",
            upstream_path("/conversations/{conversation_id}/items", conversation_id=conversation_id),
            {"items": items},
        )
        return page["data"]

    async def list_items(self, conversation_id: str, *, limit: int, order: str, after: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "order": order, **({"after": after} if after else {})}
        return await self._call(
            "GET",
            upstream_path("/conversations/{conversation_id}/items", conversation_id=conversation_id),
            params=params,
        )

    async def retrieve_item(self, conversation_id: str, item_id: str) -> dict[str, Any]:
        return await self._call(
            "GET",
            upstream_path(
                "/conversations/{conversation_id}/items/{item_id}", conversation_id=conversation_id, item_id=item_id
            ),
        )

    async def delete_item(self, conversation_id: str, item_id: str) -> None:
        await self._call(
            "DELETE",
            upstream_path(
                "/conversations/{conversation_id}/items/{item_id}", conversation_id=conversation_id, item_id=item_id
            ),
        )


def _transport_error(exc: httpx2.HTTPError) -> UpstreamError:
    """A 502, unless the request could not even be sent (a malformed header of the client's): a 400."""
    if isinstance(exc, httpx2.LocalProtocolError):
        message = "The request could not be sent upstream: a header is malformed."
        return UpstreamError(400, envelope(message, code="invalid_request"))
    return UpstreamError(502, envelope("The upstream API could not be reached.", type="upstream_error"))


def _error_json(content: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    return envelope(f"The upstream API answered {status}.", type="upstream_error")


async def _sse_events(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE body event by event (``data:`` lines joined); always releases the connection."""
    data: list[str] = []
    try:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                payload = "\n".join(data)
                data = []
                if payload != "[DONE]":
                    yield json.loads(payload)
    except httpx2.HTTPError:
        log.warning("upstream stream broke")
        yield {"type": "error", "message": "The upstream stream ended unexpectedly.", "code": "upstream_error"}
    finally:
        await response.aclose()
