"""The ownership register: which upstream threads and conversations belong to which owner.

The request hooks write to it as traffic passes (every Assistants thread, passthrough or bridge, and
every Responses conversation an owner used, the thread or conversation that is its own subject
included); erasure deletes exactly these objects upstream, export lists them, migration mines them.
Nothing else names an object to delete: ids in memories' metadata or sources are written by users
and never reach an upstream path. Only ids of OpenAI's shape are recorded (:mod:`proxy.ids`).
Entries are indexed under the owner in the state store, so erasing the owner removes them too. Keys
hold the owner's pseudonym, never a user id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.ids import is_id
from proxy.owner import Owner
from proxy.state import State

THREADS_NS = "subject_threads"
CONVERSATIONS_NS = "subject_conversations"
PASSED_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")


async def record_conversation(state: State, owner: Owner, conversation: str) -> None:
    """Remember that ``owner`` used the upstream conversation (erasure deletes it, export lists it)."""
    await _record(state, CONVERSATIONS_NS, owner, conversation)


async def record_thread(state: State, owner: Owner, thread_id: str) -> None:
    """Remember that ``owner`` owns the Assistants thread (passthrough or bridge), likewise."""
    await _record(state, THREADS_NS, owner, thread_id)


async def _record(state: State, namespace: str, owner: Owner, upstream_id: str) -> None:
    if is_id(upstream_id):  # anything else could never be deleted safely: not recorded at all
        await state.tenant(owner.tenant).set_add(namespace, owner.hash, upstream_id, subject=owner)


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


async def known_upstream(state: State, owner: Owner) -> Known:
    """Every thread / conversation the proxy recorded for the owner: what erasure deletes upstream."""
    mine = state.tenant(owner.tenant)
    threads = {upstream_id for upstream_id in await mine.set_members(THREADS_NS, owner.hash) if is_id(upstream_id)}
    conversations = await mine.set_members(CONVERSATIONS_NS, owner.hash)
    return Known(threads, {upstream_id for upstream_id in conversations if is_id(upstream_id)})
