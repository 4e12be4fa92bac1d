"""The Assistants v2 API on the emulator: memproxy's own engine over the emulator's Responses engine.

The engine (``proxy.assistants``) talks to an :class:`~proxy.assistants.upstream.Upstream`; here
that is :class:`InProcessUpstream`, which calls the emulator's Responses engine and conversation
store directly rather than over loopback HTTP: no second server round trip per call, no
credentials to pass, and a streamed response is still consumed event by event. Requests reach the
emulator's recorder as Assistants calls (``/v1/threads/...``), not as the Responses calls they
turn into, which is what an Assistants client of the emulator sent.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.routing import BaseRoute

from proxy.assistants.engine import Engine
from proxy.assistants.routes import assistants_routes
from proxy.assistants.upstream import UpstreamError
from proxy.emulator.common import cursor_page
from proxy.emulator.engine import ResponsesEngine
from proxy.emulator.items import normalize_input
from proxy.emulator.state import EmulatorState
from proxy.errors import OpenAIError

TENANT = "emulator"
POLL_AFTER_MS = 25
T = TypeVar("T")


async def _call(function: Callable[[], T]) -> T:
    """Run emulator code, turning its :class:`OpenAIError` into the engine's :class:`UpstreamError`."""
    try:
        return copy.deepcopy(function())
    except OpenAIError as exc:
        raise UpstreamError(exc.status, exc.envelope()) from None


class InProcessUpstream:
    """:class:`proxy.assistants.upstream.Upstream` over one emulator's state, without HTTP."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.responses = ResponsesEngine(state)

    async def create_response(self, body: dict[str, Any]) -> dict[str, Any]:
        return await _call(lambda: self.responses.create(body))

    async def stream_response(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        events = await _call(lambda: self.responses.events(self.responses.prepare(body)))
        return _iterate(events)

    async def retrieve_response(self, response_id: str) -> dict[str, Any]:
        return await _call(lambda: self.responses.stored(response_id).response)

    async def cancel_response(self, response_id: str) -> dict[str, Any]:
        return await _call(lambda: self.responses.cancel(response_id))

    async def create_conversation(self, metadata: dict[str, str]) -> dict[str, Any]:
        return await _call(lambda: self.state.conversations.create(metadata, []).resource())

    async def retrieve_conversation(self, conversation_id: str) -> dict[str, Any]:
        return await _call(lambda: self.state.conversations.get(conversation_id).resource())

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        def update() -> dict[str, Any]:
            conversation = self.state.conversations.get(conversation_id)
            conversation.metadata = dict(metadata)
            return conversation.resource()

        return await _call(update)

    async def delete_conversation(self, conversation_id: str) -> None:
        await _call(lambda: self.state.conversations.delete(conversation_id))

    async def create_items(self, conversation_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        def create() -> list[dict[str, Any]]:
            conversation = self.state.conversations.get(conversation_id)
            created = normalize_input(items, "items")
            conversation.items.extend(created)
            return created

        return await _call(create)

    async def list_items(self, conversation_id: str, *, limit: int, order: str, after: str | None) -> dict[str, Any]:
        params = {"limit": str(limit), "order": order, **({"after": after} if after else {})}
        return await _call(lambda: cursor_page(self.state.conversations.get(conversation_id).items, params))

    async def retrieve_item(self, conversation_id: str, item_id: str) -> dict[str, Any]:
        return await _call(lambda: self.state.conversations.get(conversation_id).item(item_id))

    async def delete_item(self, conversation_id: str, item_id: str) -> None:
        def delete() -> None:
            conversation = self.state.conversations.get(conversation_id)
            conversation.items.remove(conversation.item(item_id))

        await _call(delete)


async def _iterate(events: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for event in events:
        yield event


async def _engine(request: Request) -> Engine:
    state: EmulatorState = request.app.state.emulator
    return Engine(state.assistants, InProcessUpstream(state), TENANT)


ROUTES: list[BaseRoute] = assistants_routes(_engine, poll_after_ms=POLL_AFTER_MS)
__all__ = ["ROUTES", "InProcessUpstream"]
