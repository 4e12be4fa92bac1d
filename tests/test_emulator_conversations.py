"""Conversations and their items on the emulator, through the real openai SDK."""

from __future__ import annotations

import json

import openai
import pytest
from spec import validate


def _raw(call, *args, **kwargs) -> dict:
    """Call an SDK method through ``with_raw_response`` and return the JSON as sent."""
    return json.loads(call(*args, **kwargs).text)


def test_create_retrieve_update_delete(emulator_openai) -> None:
    conversations = emulator_openai.conversations
    created = _raw(
        conversations.with_raw_response.create,
        metadata={"user_id": "u1"},
        items=[{"type": "message", "role": "user", "content": "hello"}],
    )
    validate(created, "ConversationResource")
    assert created["id"].startswith("conv_") and created["metadata"] == {"user_id": "u1"}

    fetched = _raw(conversations.with_raw_response.retrieve, created["id"])
    assert fetched == created
    updated = _raw(conversations.with_raw_response.update, created["id"], metadata={"user_id": "u2"})
    validate(updated, "ConversationResource")
    assert conversations.retrieve(created["id"]).metadata == {"user_id": "u2"}

    deleted = _raw(conversations.with_raw_response.delete, created["id"])
    validate(deleted, "DeletedConversationResource")
    assert deleted == {"id": created["id"], "object": "conversation.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as info:
        conversations.retrieve(created["id"])
    assert info.value.body["message"] == f"No conversation found with id '{created['id']}'."


def test_items_create_list_retrieve_delete(emulator_openai) -> None:
    conversation = emulator_openai.conversations.create()
    items_api = emulator_openai.conversations.items
    added = _raw(
        items_api.with_raw_response.create,
        conversation.id,
        items=[
            {"type": "message", "role": "user", "content": "I like jazz."},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Noted."}]},
            {"type": "function_call", "call_id": "call_1", "name": "save", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        ],
    )
    validate(added, "ConversationItemList")
    ids = [item["id"] for item in added["data"]]
    assert ids[0].startswith("msg_") and added["first_id"] == ids[0] and added["last_id"] == ids[-1]

    listed = _raw(items_api.with_raw_response.list, conversation.id, order="asc")
    validate(listed, "ConversationItemList")
    assert [item["id"] for item in listed["data"]] == ids
    assert listed["data"][2] == {
        "id": ids[2],
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "save",
        "arguments": "{}",
    }

    item = _raw(items_api.with_raw_response.retrieve, ids[1], conversation_id=conversation.id)
    validate(item, "ConversationItem")
    assert item["content"][0]["text"] == "Noted."

    after_delete = _raw(items_api.with_raw_response.delete, ids[0], conversation_id=conversation.id)
    validate(after_delete, "ConversationResource")
    assert after_delete["id"] == conversation.id
    assert [i.id for i in items_api.list(conversation.id, order="asc")] == ids[1:]
    with pytest.raises(openai.NotFoundError):
        items_api.retrieve(ids[0], conversation_id=conversation.id)


def test_items_pagination(emulator_openai) -> None:
    items = [{"type": "message", "role": "user", "content": f"n{i}"} for i in range(7)]
    conversation = emulator_openai.conversations.create(items=items)
    api = emulator_openai.conversations.items

    first = api.list(conversation.id, limit=3, include=["message.output_text.logprobs"])
    assert [i.content[0].text for i in first.data] == ["n6", "n5", "n4"]  # default order: desc
    assert first.has_more is True and first.last_id == first.data[-1].id
    second = api.list(conversation.id, limit=3, after=first.last_id)
    assert [i.content[0].text for i in second.data] == ["n3", "n2", "n1"]

    everything = [i.content[0].text for i in api.list(conversation.id, limit=2, order="asc")]
    assert everything == [f"n{i}" for i in range(7)]
    last = api.list(conversation.id, order="asc", after=first.data[0].id)
    assert last.data == [] and last.has_more is False


def test_too_many_initial_items_is_400(emulator_openai) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        emulator_openai.conversations.create(items=[{"role": "user", "content": "x"}] * 21)
    assert info.value.body["param"] == "items"


def test_bad_pagination_parameters_are_400(emulator_openai) -> None:
    conversation = emulator_openai.conversations.create()
    for params in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"after": "msg_unknown"}):
        with pytest.raises(openai.BadRequestError):
            emulator_openai.conversations.items.list(conversation.id, **params)


def test_unknown_conversation_items_are_404(emulator_openai) -> None:
    with pytest.raises(openai.NotFoundError):
        emulator_openai.conversations.items.list("conv_missing")
    conversation = emulator_openai.conversations.create()
    with pytest.raises(openai.NotFoundError) as info:
        emulator_openai.conversations.items.retrieve("msg_missing", conversation_id=conversation.id)
    assert info.value.body["message"] == "No item found with id 'msg_missing'."
