"""Everything one emulator instance remembers, in memory.

One :class:`EmulatorState` per ``create_app()`` call, so each test server starts empty and tests
never see each other's objects. No HTTP here: the Responses engine (and later the Assistants engine)
use the stores directly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from proxy.assistants.records import MemoryRecords
from proxy.assistants.validation import not_found
from proxy.emulator.common import now
from proxy.emulator.control import FaultBook, Recorder
from proxy.emulator.ids import new_id


@dataclass
class Conversation:
    """A conversation and its items (item resources with ids), in creation order."""

    id: str
    created_at: int
    metadata: dict[str, str]
    items: list[dict[str, Any]] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        """The ``conversation`` object the API answers."""
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata}

    def item(self, item_id: str) -> dict[str, Any]:
        for item in self.items:
            if item.get("id") == item_id:
                return item
        raise not_found("item", item_id, param="item_id")


@dataclass
class StoredResponse:
    """A response object plus what a follow-up needs: its input items and the full context."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]
    task: asyncio.Task[None] | None = None


@dataclass
class StoredFile:
    """An uploaded file: its ``file`` object and its bytes."""

    obj: dict[str, Any]
    content: bytes


class ConversationStore:
    """Conversations by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Conversation] = {}

    def create(self, metadata: dict[str, str], items: list[dict[str, Any]]) -> Conversation:
        conversation = Conversation(new_id("conversation"), now(), metadata, list(items))
        self._by_id[conversation.id] = conversation
        return conversation

    def get(self, conversation_id: str) -> Conversation:
        try:
            return self._by_id[conversation_id]
        except KeyError:
            raise not_found("conversation", conversation_id, param="conversation_id") from None

    def delete(self, conversation_id: str) -> None:
        self.get(conversation_id)
        del self._by_id[conversation_id]

    def clear(self) -> None:
        self._by_id.clear()


@dataclass
class EmulatorState:
    """Per-app state. ``background_delay``: seconds a background response spends queued, then in progress."""

    background_delay: float = 0.05
    recorder: Recorder = field(default_factory=Recorder)
    faults: FaultBook = field(default_factory=FaultBook)
    conversations: ConversationStore = field(default_factory=ConversationStore)
    responses: dict[str, StoredResponse] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)
    assistants: MemoryRecords = field(default_factory=MemoryRecords)  # the Assistants engine's records

    def reset(self) -> None:
        """Forget every request, fault and object (``POST /_emulator/reset``)."""
        self.cancel_tasks()
        self.recorder.clear()
        self.faults.clear()
        self.conversations.clear()
        self.responses.clear()
        self.files.clear()
        self.assistants.clear()

    def cancel_tasks(self) -> None:
        """Stop background responses still running (on reset and on shutdown)."""
        for stored in self.responses.values():
            if stored.task is not None and not stored.task.done():
                stored.task.cancel()
