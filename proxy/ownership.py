"""The ownership register: which upstream threads and conversations belong to which owner.

The request hooks write to it as traffic passes (a named user's Assistants thread, passthrough or
bridge; a Responses conversation); erasure reads it to delete those objects upstream, export lists
them, migration mines them. Entries are indexed under the owner in the state store, so erasing the
owner removes them too. Keys hold the owner's pseudonym, never a user id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.memory.models import Memory
from proxy.owner import Owner
from proxy.state import State

THREADS_NS = "subject_threads"
CONVERSATIONS_NS = "subject_conversations"
PASSED_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")


async def record_conversation(state: State, owner: Owner, conversation: str) -> None:
    """Remember that ``owner`` used the upstream conversation (erasure deletes it, export lists it)."""
    await state.tenant(owner.tenant).set_add(CONVERSATIONS_NS, owner.hash, conversation, subject=owner)


async def record_thread(state: State, owner: Owner, thread_id: str) -> None:
    """Remember that ``owner`` owns the Assistants thread (passthrough or bridge), likewise."""
    await state.tenant(owner.tenant).set_add(THREADS_NS, owner.hash, thread_id, subject=owner)


def credential_headers(api_key: str | None = None, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Upstream headers: the caller's own (API) or ``Authorization: Bearer <key>`` (CLI)."""
    if headers is not None:
        passed = {name: headers[name] for name in PASSED_HEADERS if name in headers}
        if passed:
            return passed
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class Known:
    """Upstream ids known for a subject: Assistants threads and Responses conversations."""

    threads: set[str] = field(default_factory=set)
    conversations: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, list[str]]:
        return {"threads": sorted(self.threads), "conversations": sorted(self.conversations)}


def _add(known: Known, upstream_id: Any) -> None:
    if not isinstance(upstream_id, str) or not upstream_id:
        return
    (known.conversations if upstream_id.startswith("conv_") else known.threads).add(upstream_id)


async def known_upstream(state: State, owner: Owner, memories: Iterable[Memory] = ()) -> Known:
    """Every thread / conversation id seen for the owner: registered, its own, or its memories' sources."""
    known, mine = Known(), state.tenant(owner.tenant)
    for namespace in (THREADS_NS, CONVERSATIONS_NS):
        for upstream_id in await mine.set_members(namespace, owner.hash):
            _add(known, upstream_id)
    for prefix in ("thread:", "conversation:"):  # a thread or conversation that is its own subject
        if owner.subject.startswith(prefix):
            _add(known, owner.subject[len(prefix) :])
    for memory in memories:
        _add(known, memory.source.thread_id)
        source = memory.metadata.get("source") if isinstance(memory.metadata, dict) else None
        if isinstance(source, dict):
            _add(known, source.get("conversation_id"))
            _add(known, source.get("thread_id"))
    return known
