"""Append-only, keyed hash chain of removals (erasure, expiry) and exports, with a head kept apart.

Entries hold no personal data: the subject appears only as its keyed hash. Each entry carries its
place in the tenant's chain (``seq``: 1, 2, 3, ...), the hash of the previous entry (``prev``) and
its own ``hash``: an HMAC-SHA256, under a key derived from the server secret, of the entry's
canonical JSON. Appends go through :meth:`proxy.state.State.append_chained`, one atomic step on
either backend, so concurrent appends on any number of replicas never fork the chain, and that step
also stores the chain's head ``(seq, hash)`` apart from the log.

What :func:`verify` proves: without the secret nobody can edit, insert or reorder an entry, nor
rewrite the log with recomputed hashes; deleting an entry breaks the links; deleting the newest
entries, or the whole log, no longer matches the stored head. What it cannot see alone: the log and
its head rolled back together to an earlier state (both are in the same store). Keep the head
outside memproxy (``memproxy audit head`` into a ticket or your own log, or the per-append log line)
and pass it back (``memproxy audit verify --head SEQ:HASH``) to catch that too.

Entries written before the chain was keyed (no ``seq``, ``hash`` a plain SHA-256) are a legacy
prefix: verified as before, and the first keyed entry links to the last of them.

Entries are written without a subject index, so erasing a subject never erases the proof that it
was erased.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.errors import MemproxyError
from proxy.owner import Owner
from proxy.state import ChainHead, State

log = logging.getLogger("memproxy.audit")

COLLECTION = "audit"
GENESIS = "0" * 64
KEY_CONTEXT = b"memproxy audit chain v1"
MIN_HEAD_HASH = 16
"""Hex digits of a head kept outside that are enough (the per-append log line shows this many)."""
HEAD = re.compile(r"(\d+):([0-9a-f]+)")


class BadHead(MemproxyError, ValueError):
    """A head kept outside is not ``SEQ:HASH`` (seq from 1, at least 16 hex digits of the hash)."""


def chain_key(secret: bytes) -> bytes:
    """The chain's HMAC key: derived from the server secret, used for nothing else."""
    return hmac.new(secret, KEY_CONTEXT, hashlib.sha256).digest()


def _canonical(entry: dict[str, Any]) -> bytes:
    body = {key: value for key, value in entry.items() if key != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _legacy_digest(entry: dict[str, Any]) -> str:
    """How wave 1 hashed an entry: plain SHA-256, no key."""
    return hashlib.sha256(_canonical(entry)).hexdigest()


def _keyed_digest(key: bytes, entry: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(entry), hashlib.sha256).hexdigest()


async def append(
    state: State,
    action: str,
    *,
    secret: bytes,
    owner: Owner | None = None,
    tenant: str | None = None,
    subject_hash: str | None = None,
    counts: dict[str, int] | None = None,
    outcome: str = "ok",
) -> dict[str, Any]:
    """Add one entry after the tenant's latest and return it: about ``owner`` (its pseudonym only), about
    an owner known only by pseudonym (``tenant`` and ``subject_hash``: the janitor), or a tenant-wide
    entry about ``tenant``. ``secret`` is the server secret (the chain's key derives from it)."""
    tenant = owner.tenant if owner is not None else tenant
    if not tenant:
        raise ValueError("an audit entry is about an owner or a tenant")
    subject_hash = owner.hash if owner is not None else subject_hash
    key = chain_key(secret)
    fields: dict[str, Any] = {
        "id": "audit_" + uuid.uuid4().hex,
        "at": datetime.now(UTC).isoformat(),
        "action": action,
        "tenant": tenant,
        "subject": subject_hash,
        "counts": counts or {},
        "outcome": outcome,
    }

    def link(head: ChainHead | None) -> dict[str, Any]:
        entry = {**fields, "seq": (head.seq if head else 0) + 1, "prev": head.hash if head else GENESIS}
        return {**entry, "hash": _keyed_digest(key, entry)}

    entry = await state.append_chained(tenant, COLLECTION, link)
    log.info("audit %s appended to %s: seq %d, hash %s", action, tenant, entry["seq"], entry["hash"][:MIN_HEAD_HASH])
    return entry


async def entries(
    state: State, tenant: str, *, limit: int = 100, after: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    page = await state.list_records(tenant, COLLECTION, limit=limit, order="asc", after=after)
    return list(page.items), page.has_more


async def _every_entry(state: State, tenant: str) -> AsyncIterator[dict[str, Any]]:
    after: str | None = None
    while True:
        batch, more = await entries(state, tenant, limit=500, after=after)
        for entry in batch:
            yield entry
        if not more:
            return
        after = batch[-1]["id"]


async def head(state: State, tenant: str) -> ChainHead | None:
    """The tenant's stored head: seq and hash of the newest keyed entry (None before the first)."""
    return await state.chain_head(tenant, COLLECTION)


def parse_head(text: str) -> ChainHead:
    """``SEQ:HASH`` as ``memproxy audit head`` prints it (the hash may be cut to 16 hex digits)."""
    match = HEAD.fullmatch(text.strip().lower())
    if match is None or int(match[1]) < 1 or len(match[2]) < MIN_HEAD_HASH:
        raise BadHead(f"a head is SEQ:HASH with SEQ from 1 and at least {MIN_HEAD_HASH} hex digits, not {text!r}")
    return ChainHead(int(match[1]), match[2])


@dataclass(frozen=True)
class Verdict:
    """``ok``, or where the chain broke: ``broken_at`` (an entry id, or None at the end) and why."""

    ok: bool
    checked: int
    broken_at: str | None = None
    reason: str | None = None
    head: ChainHead | None = None
    """The log's newest keyed entry, as walked."""
    legacy: int = 0
    """Unkeyed entries written before the chain was keyed, at its start."""

    def as_json(self) -> dict[str, Any]:
        return {
            "object": "audit.verification",
            "ok": self.ok,
            "checked": self.checked,
            "broken_at": self.broken_at,
            "reason": self.reason,
            "head": str(self.head) if self.head else None,
            "legacy": self.legacy,
        }


@dataclass
class _Walk:
    """The chain read so far: where it stands, and the hashes of the seqs the heads name."""

    key: bytes
    wanted: set[int]
    previous: str = GENESIS
    seq: int = 0
    checked: int = 0
    legacy: int = 0
    found: dict[int, str] = field(default_factory=dict)

    def step(self, entry: dict[str, Any]) -> str | None:
        """Take the next entry; what is wrong with it, if anything."""
        keyed = "seq" in entry
        if not keyed and self.seq:
            return "an unkeyed entry after the keyed chain began (written without the server's secret)"
        expected = _keyed_digest(self.key, entry) if keyed else _legacy_digest(entry)
        if not hmac.compare_digest(str(entry.get("hash")), expected):
            return "its hash does not match its content (edited, or not written with this server's secret)"
        if entry.get("prev") != self.previous:
            return "it does not link to the entry before it (an entry was removed, inserted or reordered)"
        if keyed and entry["seq"] != self.seq + 1:
            return f"its seq is {entry['seq']} where {self.seq + 1} was due"
        self.previous, self.checked = entry["hash"], self.checked + 1
        if keyed:
            self.seq = entry["seq"]
            if self.seq in self.wanted:
                self.found[self.seq] = entry["hash"]
        else:
            self.legacy += 1
        return None

    def reaches(self, head: ChainHead, what: str, cause: str) -> str | None:
        """Whether the log holds ``head``'s entry: the log may go on past it (appends during the walk)."""
        if head.seq > self.seq:
            return f"the log ends at seq {self.seq} but {what} says seq {head.seq}: {cause}"
        found = self.found.get(head.seq, "")
        if not found.startswith(head.hash):
            return f"entry seq {head.seq} has hash {found[:MIN_HEAD_HASH]}, {what} says {head.hash[:MIN_HEAD_HASH]}: {cause}"
        return None

    def verdict(self, problem: str | None = None, at: str | None = None) -> Verdict:
        head = ChainHead(self.seq, self.previous) if self.seq else None
        return Verdict(problem is None, self.checked, at, problem, head, self.legacy)


async def verify(state: State, tenant: str, *, secret: bytes, head: ChainHead | None = None) -> Verdict:
    """Walk the tenant's chain from the start, then hold it against its stored head and ``head``.

    ``head``: one kept outside memproxy (see the module docstring). The stored head is read before
    the walk, so an append meanwhile only makes the log longer than the head, which is fine.
    """
    anchor = await state.chain_head(tenant, COLLECTION)
    walk = _Walk(chain_key(secret), {h.seq for h in (anchor, head) if h is not None})
    async for entry in _every_entry(state, tenant):
        problem = walk.step(entry)
        if problem:
            return walk.verdict(problem, entry.get("id"))
    problem = None
    if anchor is not None:
        problem = walk.reaches(anchor, "the stored head", "the newest entries were deleted or the log rewritten")
    elif walk.seq:
        problem = f"the log holds keyed entries up to seq {walk.seq} but no stored head: the head was deleted"
    if not problem and head is not None:
        problem = walk.reaches(head, "the head kept outside", "log and stored head were rolled back or rewritten")
    return walk.verdict(problem)
