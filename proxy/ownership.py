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

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from proxy.config import Settings
from proxy.ids import is_id
from proxy.owner import Owner
from proxy.state import State

THREADS_NS = "subject_threads"
CONVERSATIONS_NS = "subject_conversations"
PASSED_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")
Kind = Literal["thread", "conversation"]


def route_of(settings: Settings) -> str:
    """Which upstream (and Assistants mode) an id was seen through: an id is deleted only through it."""
    where = f"{settings.assistants_mode}|{settings.upstream_url.rstrip('/')}"
    return hashlib.sha256(where.encode()).hexdigest()[:12]


async def record_conversation(state: State, owner: Owner, conversation: str, route: str) -> None:
    """Remember that ``owner`` used the upstream conversation (erasure deletes it, export lists it)."""
    await record(state, owner, "conversation", conversation, route)


async def record_thread(state: State, owner: Owner, thread_id: str, route: str) -> None:
    """Remember that ``owner`` owns the Assistants thread (passthrough or bridge), likewise."""
    await record(state, owner, "thread", thread_id, route)


async def record(state: State, owner: Owner, kind: Kind, upstream_id: str, route: str) -> None:
    """Record ``upstream_id`` for ``owner`` as seen through ``route`` (:func:`route_of`)."""
    if is_id(upstream_id):  # anything else could never be deleted safely: not recorded at all
        namespace = CONVERSATIONS_NS if kind == "conversation" else THREADS_NS
        await state.tenant(owner.tenant).set_add(namespace, owner.hash, f"{upstream_id}@{route}", subject=owner)


def credential_headers(api_key: str | None = None, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Upstream headers: the caller's own (API) or ``Authorization: Bearer <key>`` (CLI)."""
    if headers is not None:
        passed = {name: headers[name].strip(" \t") for name in PASSED_HEADERS if name in headers}
        if passed:
            return passed
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class Known:
    """Upstream ids recorded for an owner: Assistants threads and Responses conversations.

    ``elsewhere`` holds those recorded through another upstream or Assistants mode than the one asked
    about (id -> (kind, route)): this process cannot delete them, and must say so.
    """

    threads: set[str] = field(default_factory=set)
    conversations: set[str] = field(default_factory=set)
    elsewhere: dict[str, tuple[Kind, str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, list[str]]:
        recorded = {"thread": set(self.threads), "conversation": set(self.conversations)}
        for upstream_id, (kind, _) in self.elsewhere.items():
            recorded[kind].add(upstream_id)
        return {"threads": sorted(recorded["thread"]), "conversations": sorted(recorded["conversation"])}


async def known_upstream(state: State, owner: Owner, route: str) -> Known:
    """Every thread / conversation the proxy recorded for the owner; what ``route`` can delete apart."""
    mine, known = state.tenant(owner.tenant), Known()
    kinds: tuple[tuple[Kind, str, set[str]], ...] = (
        ("thread", THREADS_NS, known.threads),
        ("conversation", CONVERSATIONS_NS, known.conversations),
    )
    for kind, namespace, here in kinds:
        for member in await mine.set_members(namespace, owner.hash):
            upstream_id, _, seen_via = member.partition("@")  # wave-1 members carry no route: this one
            if not is_id(upstream_id):
                continue
            if seen_via and seen_via != route:
                known.elsewhere[upstream_id] = (kind, seen_via)
            else:
                here.add(upstream_id)
    return known
