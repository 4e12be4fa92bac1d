"""Append-only, hash-chained audit log of removals (erasure, expiry) and exports.

Entries hold no personal data: the subject appears only as its keyed hash. Each entry carries
the hash of the previous one, so a deleted or edited entry breaks the chain and
:func:`verify` finds where. Entries are written without a subject index, so erasing a subject
never erases the proof that it was erased.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.owner import Owner
from proxy.state import State

COLLECTION = "audit"
GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def append(
    state: State,
    action: str,
    *,
    owner: Owner | None = None,
    tenant: str | None = None,
    subject_hash: str | None = None,
    counts: dict[str, int] | None = None,
    outcome: str = "ok",
) -> dict[str, Any]:
    """Add one entry after the tenant's latest and return it: about ``owner`` (its pseudonym only), about
    an owner known only by pseudonym (``tenant`` and ``subject_hash``: the janitor), or a tenant-wide
    entry about ``tenant``."""
    tenant = owner.tenant if owner is not None else tenant
    if not tenant:
        raise ValueError("an audit entry is about an owner or a tenant")
    subject_hash = owner.hash if owner is not None else subject_hash
    latest = await state.list_records(tenant, COLLECTION, limit=1, order="desc")
    entry: dict[str, Any] = {
        "id": "audit_" + uuid.uuid4().hex,
        "at": datetime.now(UTC).isoformat(),
        "action": action,
        "tenant": tenant,
        "subject": subject_hash,
        "counts": counts or {},
        "outcome": outcome,
        "prev": latest.items[0]["hash"] if latest.items else GENESIS,
    }
    entry["hash"] = _digest(entry)
    await state.put_record(tenant, COLLECTION, entry["id"], entry)
    return entry


async def entries(state: State, tenant: str, *, limit: int = 100, after: str | None = None) -> tuple[list[dict], bool]:
    page = await state.list_records(tenant, COLLECTION, limit=limit, order="asc", after=after)
    return list(page.items), page.has_more


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    broken_at: str | None = None


async def verify(state: State, tenant: str) -> Verdict:
    """Walk the tenant's chain from the start; the first entry that does not link is reported."""
    previous, checked, after = GENESIS, 0, None
    while True:
        batch, more = await entries(state, tenant, limit=500, after=after)
        for entry in batch:
            if entry.get("prev") != previous or entry.get("hash") != _digest(entry):
                return Verdict(False, checked, entry.get("id"))
            previous, checked = entry["hash"], checked + 1
        if not more:
            return Verdict(True, checked)
        after = batch[-1]["id"]
