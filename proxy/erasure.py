"""GDPR Art. 17 erasure and Art. 15/20 export of one subject, across every system memproxy touches.

Erasure, in this order:

1. the subject's pending jobs are dropped, so no worker can re-add a memory afterwards;
2. every memory of the subject is hard-deleted (tombstones and history included, any backend);
3. unless ``keep_upstream``, the upstream threads and conversations the proxy has seen for the
   subject are deleted with the caller's credential: passthrough Assistants threads (state set
   ``subject_threads``), Responses conversations (``subject_conversations``, recorded by the
   Responses hook), bridge threads (through the bridge's own thread deletion: conversation and
   records), and the threads / conversations named as the source of the subject's memories;
   each deletion is tried ``MEMPROXY_ERASURE_ATTEMPTS`` times with backoff; 404 means already gone;
4. every state entry about the subject is removed;
5. one audit entry records the counts per system and the outcome: ``ok``, or ``partial`` when an
   upstream deletion still failed. Failed ids are kept (re-tracked for the subject) and reported,
   so calling erasure again retries them; they are never dropped silently;
6. the state store is compacted (SQLite: its write-ahead log checkpointed and truncated), so what
   step 4 deleted is gone from its files too. The memory store needs no such step: step 2 destroys
   the subject's data key, and every copy of their sealed memories that its files keep (Qdrant
   Edge's write-ahead log, segments not yet vacuumed) can no longer be opened.

Nothing here logs a subject, a message body or a key: ids, counts and error classes only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from proxy import audit
from proxy.assistants import threads
from proxy.assistants.engine import THREADS, Engine
from proxy.assistants.upstream import HttpUpstream, UpstreamError
from proxy.errors import MemproxyError
from proxy.fence import raise_fence
from proxy.ids import upstream_path
from proxy.owner import Owner
from proxy.ownership import Kind, Known, credential_headers, known_upstream, record
from proxy.runtime import Runtime
from proxy.state import State

log = logging.getLogger("memproxy.erasure")


@dataclass
class Failure:
    system: str
    kind: Kind
    id: str
    error: str
    attempts: int
    route: str = ""
    """The route the id was recorded through (kept for the next erasure to retry through it)."""

    def as_json(self) -> dict[str, Any]:
        return {"system": self.system, "kind": self.kind, "id": self.id, "error": self.error, "attempts": self.attempts}


@dataclass
class ErasureReport:
    subject_hash: str
    counts: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=lambda: {"threads": [], "conversations": []})
    failed: list[Failure] = field(default_factory=list)
    kept_upstream: bool = False
    audit_id: str = ""

    @property
    def outcome(self) -> str:
        return "partial" if self.failed else "ok"

    def as_json(self) -> dict[str, Any]:
        return {
            "object": "erasure",
            "subject": self.subject_hash,
            "outcome": self.outcome,
            "deleted": self.counts,
            "upstream": {**self.deleted, "kept": self.kept_upstream},
            "failed": [failure.as_json() for failure in self.failed],
            "audit_id": self.audit_id,
        }


class _Gone(MemproxyError):
    """The upstream object no longer exists (404): nothing left to delete."""


class _Failed(MemproxyError):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


async def _http_delete(runtime: Runtime, path: str, headers: dict[str, str]) -> None:
    url = runtime.settings.upstream_url.rstrip("/") + path
    try:
        response = await runtime.http.request("DELETE", url, headers=headers)
    except httpx2.HTTPError as exc:
        raise _Failed(f"upstream unreachable ({type(exc).__name__})") from None
    if response.status_code == 404:
        raise _Gone()
    if response.status_code >= 400:
        raise _Failed(f"upstream answered {response.status_code}")


async def _bridge_delete(runtime: Runtime, tenant: str, thread_id: str, headers: dict[str, str]) -> bool:
    """Delete a bridge thread (its conversation, then its records); False when it is no bridge thread."""
    if await runtime.state.get_record(tenant, THREADS, thread_id) is None:
        return False
    engine = Engine(runtime.state, HttpUpstream(runtime.http, runtime.settings.upstream_url, headers), tenant)
    try:
        await threads.delete(engine, thread_id)
    except UpstreamError as exc:
        raise _Failed(f"upstream answered {exc.status}") from None
    return True


async def _with_retries(runtime: Runtime, attempt: Any) -> tuple[str, int, str]:
    """Run ``attempt`` until it succeeds: ("deleted" | "gone" | "failed", attempts, error)."""
    tries = max(1, runtime.settings.erasure_attempts)
    delay, error = runtime.settings.erasure_backoff, ""
    for number in range(1, tries + 1):
        try:
            await attempt()
            return "deleted", number, ""
        except _Gone:
            return "gone", number, ""
        except _Failed as exc:
            error = exc.error
        if number < tries:
            await asyncio.sleep(delay)
            delay *= 2
    return "failed", tries, error


async def _delete_upstream(
    runtime: Runtime, tenant: str, known: Known, headers: dict[str, str], report: ErasureReport
) -> None:
    bridge = runtime.settings.assistants_mode == "bridge"
    for thread_id in sorted(known.threads):

        async def attempt(thread_id: str = thread_id) -> None:
            if bridge and await _bridge_delete(runtime, tenant, thread_id, headers):
                return
            if bridge:
                raise _Gone()  # the bridge knows no such thread: nothing upstream answers /threads
            await _http_delete(runtime, upstream_path("/threads/{t}", t=thread_id), headers)

        await _settle(runtime, attempt, "thread", thread_id, report)
    for conversation in sorted(known.conversations):
        await _settle(
            runtime,
            lambda c=conversation: _http_delete(runtime, upstream_path("/conversations/{c}", c=c), headers),
            "conversation",
            conversation,
            report,
        )
    for upstream_id, (kind, route) in sorted(known.elsewhere.items()):  # never reported as deleted
        error = "recorded through another upstream or Assistants mode: erase where the proxy serves it"
        report.failed.append(Failure("upstream", kind, upstream_id, error, 0, route))


async def _settle(runtime: Runtime, attempt: Any, kind: Kind, upstream_id: str, report: ErasureReport) -> None:
    result, attempts, error = await _with_retries(runtime, attempt)
    if result == "failed":
        report.failed.append(Failure("upstream", kind, upstream_id, error, attempts, runtime.route))
        log.warning("erasure: deleting upstream %s %s failed after %d attempts: %s", kind, upstream_id, attempts, error)
    elif result == "deleted":
        report.deleted[kind + "s"].append(upstream_id)


async def erase_subject(
    runtime: Runtime,
    owner: Owner,
    *,
    api_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    keep_upstream: bool = False,
) -> ErasureReport:
    """Erase everything of ``owner`` (see the module docstring); the report says what went where."""
    memory, state = runtime.require_memory().of(owner), runtime.state
    report = ErasureReport(owner.hash, kept_upstream=keep_upstream)
    await raise_fence(state, owner, time.time())  # first: nothing begun before now may write again
    jobs = await state.drop_jobs(owner)
    jobs += await runtime.spool.drop(owner)  # turns spooled while the state store was away are pending jobs too
    known = await known_upstream(state, owner, runtime.route)
    memories = await memory.erase()
    if not keep_upstream:
        await _delete_upstream(runtime, owner.tenant, known, credential_headers(api_key, headers), report)
    erased = await state.forget_subject(owner)
    await _retrack_failures(state, owner, report)
    report.counts = {
        "memories": memories,
        "state_entries": erased.entries,
        "jobs": jobs + erased.jobs,
        "upstream_threads": len(report.deleted["threads"]),
        "upstream_conversations": len(report.deleted["conversations"]),
        "upstream_failed": len(report.failed),
    }
    entry = await audit.append(
        state, "erase", secret=runtime.secret, owner=owner, counts=report.counts, outcome=report.outcome
    )
    report.audit_id = entry["id"]
    await state.compact()
    log.info("erasure of %s: %s (%s)", owner.hash, report.outcome, report.counts)
    return report


async def _retrack_failures(state: State, owner: Owner, report: ErasureReport) -> None:
    """Keep what could not be deleted upstream findable, so the next erasure call retries it."""
    for failure in report.failed:
        await record(state, owner, failure.kind, failure.id, failure.route)


async def export_subject(runtime: Runtime, owner: Owner) -> dict[str, Any]:
    """GDPR Art. 15/20: memories (history, tombstones), upstream ids known, audit entries about them."""
    state = runtime.state
    memories = await runtime.require_memory().of(owner).export()
    known = await known_upstream(state, owner, runtime.route)
    await audit.append(state, "export", secret=runtime.secret, owner=owner, counts={"memories": len(memories)})
    trail: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        batch, more = await audit.entries(state, owner.tenant, limit=500, after=after)
        trail.extend(entry for entry in batch if entry.get("subject") == owner.hash)
        if not more:
            break
        after = batch[-1]["id"]
    return {
        "object": "export",
        "subject": owner.subject,
        "memories": [memory.model_dump(mode="json", exclude={"tenant"}) for memory in memories],
        "upstream": known.as_json(),
        "audit": trail,
    }
