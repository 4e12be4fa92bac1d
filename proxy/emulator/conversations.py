"""``/v1/conversations`` and their items, stored in memory (``state.ConversationStore``).

A response created with ``conversation`` reads these items as its context and appends its input
and output to them (``engine.py``); these endpoints are the direct way in.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.assistants.validation import check_metadata, invalid, require
from proxy.emulator.common import cursor_page, list_object, parse_json_body
from proxy.emulator.items import normalize_input
from proxy.emulator.state import Conversation, ConversationStore

MAX_ITEMS_PER_CALL = 20


def _store(request: Request) -> ConversationStore:
    return request.app.state.emulator.conversations


def _conversation(request: Request) -> Conversation:
    return _store(request).get(request.path_params["conversation_id"])


def _items(value: Any, param: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(param, "expected an array of items.", "invalid_type")
    if len(value) > MAX_ITEMS_PER_CALL:
        message = f"array too long; at most {MAX_ITEMS_PER_CALL} items are allowed."
        raise invalid(param, message, "array_above_max_length")
    return normalize_input(value, param)


async def create(request: Request) -> Response:
    """``POST /conversations``: optional ``metadata`` and initial ``items``."""
    body = parse_json_body(await request.body())
    metadata = check_metadata(body.get("metadata"))
    conversation = _store(request).create(metadata, _items(body.get("items"), "items"))
    return JSONResponse(conversation.resource())


async def retrieve(request: Request) -> Response:
    return JSONResponse(_conversation(request).resource())


async def update(request: Request) -> Response:
    """``POST /conversations/{id}``: replaces the metadata."""
    body = parse_json_body(await request.body())
    require(body, "metadata")
    conversation = _conversation(request)
    conversation.metadata = check_metadata(body["metadata"])
    return JSONResponse(conversation.resource())


async def delete(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    _store(request).delete(conversation_id)
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def create_items(request: Request) -> Response:
    """``POST /conversations/{id}/items``: appends the items; answers them as a list."""
    body = parse_json_body(await request.body())
    require(body, "items")
    conversation = _conversation(request)
    items = _items(body["items"], "items")
    conversation.items.extend(items)
    return JSONResponse(list_object(items))


async def list_items(request: Request) -> Response:
    """``GET /conversations/{id}/items``: ``after``/``limit``/``order`` (default desc); ``include`` ignored."""
    return JSONResponse(cursor_page(_conversation(request).items, request.query_params))


async def retrieve_item(request: Request) -> Response:
    return JSONResponse(_conversation(request).item(request.path_params["item_id"]))


async def delete_item(request: Request) -> Response:
    """``DELETE /conversations/{id}/items/{item_id}``: answers the conversation, as OpenAI does."""
    conversation = _conversation(request)
    conversation.items.remove(conversation.item(request.path_params["item_id"]))
    return JSONResponse(conversation.resource())


ROUTES = [
    Route("/v1/conversations", create, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}", retrieve, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}", update, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}", delete, methods=["DELETE"]),
    Route("/v1/conversations/{conversation_id}/items", create_items, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}/items", list_items, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}/items/{item_id}", retrieve_item, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}/items/{item_id}", delete_item, methods=["DELETE"]),
]
