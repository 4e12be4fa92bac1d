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
   so calling erasure again retries them; they are never dropped silently.

Nothing here logs a subject, a message body or a key: ids, counts and error classes only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from proxy import audit
from proxy.identity import subject_hash
from proxy.state import State, Subject

if TYPE_CHECKING:
    from proxy.config import Settings
    from proxy.memory.models import Memory
    from proxy.runtime import Runtime

log = logging.getLogger("memproxy.erasure")

THREADS_NS = "subject_threads"
CONVERSATIONS_NS = "subject_conversations"
PASSED_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")


def subject_key(tenant: str, hashed: str) -> str:
    return f"{tenant}:{hashed}"


async def record_conversation(runtime: Runtime, tenant: str, subject: str, conversation: str) -> None:
    """Remember that ``subject`` used the upstream conversation (erasure deletes it, export lists it)."""
    await _record(runtime, CONVERSATIONS_NS, tenant, subject, conversation)


async def record_thread(runtime: Runtime, tenant: str, subject: str, thread_id: str) -> None:
    """Remember that ``subject`` owns the Assistants thread (passthrough or bridge), likewise."""
    await _record(runtime, THREADS_NS, tenant, subject, thread_id)


async def _record(runtime: Runtime, namespace: str, tenant: str, subject: str, upstream_id: str) -> None:
    hashed = subject_hash(runtime.secret, tenant, subject)
    await runtime.state.set_add(namespace, subject_key(tenant, hashed), upstream_id, subject=Subject(tenant, subject))


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


async def known_upstream(runtime: Runtime, tenant: str, subject: str, memories: list[Memory] | None = None) -> Known:
    """Every thread / conversation id the proxy has seen for the subject."""
    state, hashed = runtime.state, subject_hash(runtime.secret, tenant, subject)
    known = Known()
    for thread_id in await state.set_members(THREADS_NS, subject_key(tenant, hashed)):
        _add(known, thread_id)
    for conversation in await state.set_members(CONVERSATIONS_NS, subject_key(tenant, hashed)):
        _add(known, conversation)
    for prefix in ("thread:", "conversation:"):  # a thread or conversation that is its own subject
        if subject.startswith(prefix):
            _add(known, subject[len(prefix) :])
    if memories is None and runtime.memory is not None:
        memories = await runtime.memory.export(tenant, subject)
    for memory in memories or []:
        _add(known, memory.source.thread_id)
        source = memory.metadata.get("source") if isinstance(memory.metadata, dict) else None
        if isinstance(source, dict):
            _add(known, source.get("conversation_id"))
            _add(known, source.get("thread_id"))
    return known


@dataclass
class Failure:
    system: str
    kind: str
    id: str
    error: str
    attempts: int

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


class _Gone(Exception):
    """The upstream object no longer exists (404): nothing left to delete."""


class _Failed(Exception):
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
    from proxy.assistants import threads
    from proxy.assistants.engine import THREADS, Engine
    from proxy.assistants.upstream import HttpUpstream, UpstreamError

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
            await _http_delete(runtime, f"/threads/{thread_id}", headers)

        await _settle(runtime, attempt, "thread", thread_id, report)
    for conversation in sorted(known.conversations):
        await _settle(
            runtime,
            lambda c=conversation: _http_delete(runtime, f"/conversations/{c}", headers),
            "conversation",
            conversation,
            report,
        )


async def _settle(runtime: Runtime, attempt: Any, kind: str, upstream_id: str, report: ErasureReport) -> None:
    result, attempts, error = await _with_retries(runtime, attempt)
    if result == "failed":
        report.failed.append(Failure("upstream", kind, upstream_id, error, attempts))
        log.warning("erasure: deleting upstream %s %s failed after %d attempts: %s", kind, upstream_id, attempts, error)
    elif result == "deleted":
        report.deleted[kind + "s"].append(upstream_id)


async def erase_subject(
    runtime: Runtime,
    tenant: str,
    subject: str,
    *,
    api_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    keep_upstream: bool = False,
) -> ErasureReport:
    """Erase everything of ``subject`` (see the module docstring); the report says what went where."""
    if runtime.memory is None:
        raise RuntimeError(f"the memory layer is unavailable: {runtime.problems.get('memory', 'not opened')}")
    state, owner = runtime.state, Subject(tenant, subject)
    hashed = subject_hash(runtime.secret, tenant, subject)
    report = ErasureReport(hashed, kept_upstream=keep_upstream)
    jobs = await state.drop_jobs(owner)  # first: a worker must not re-add what is erased next
    known = await known_upstream(runtime, tenant, subject)
    memories = await runtime.memory.erase_subject(tenant, subject)
    if not keep_upstream:
        await _delete_upstream(runtime, tenant, known, credential_headers(api_key, headers), report)
    erased = await state.forget_subject(owner)
    await _retrack_failures(state, tenant, subject, hashed, report)
    report.counts = {
        "memories": memories,
        "state_entries": erased.entries,
        "jobs": jobs + erased.jobs,
        "upstream_threads": len(report.deleted["threads"]),
        "upstream_conversations": len(report.deleted["conversations"]),
        "upstream_failed": len(report.failed),
    }
    entry = await audit.append(
        state, tenant, "erase", subject_hash=hashed, counts=report.counts, outcome=report.outcome
    )
    report.audit_id = entry["id"]
    log.info("erasure of %s: %s (%s)", hashed, report.outcome, report.counts)
    return report


async def _retrack_failures(state: State, tenant: str, subject: str, hashed: str, report: ErasureReport) -> None:
    """Keep what could not be deleted upstream findable, so the next erasure call retries it."""
    owner, key = Subject(tenant, subject), subject_key(tenant, hashed)
    for failure in report.failed:
        namespace = CONVERSATIONS_NS if failure.kind == "conversation" else THREADS_NS
        await state.set_add(namespace, key, failure.id, subject=owner)


async def export_subject(runtime: Runtime, tenant: str, subject: str) -> dict[str, Any]:
    """GDPR Art. 15/20: memories (history, tombstones), upstream ids known, audit entries about them."""
    if runtime.memory is None:
        raise RuntimeError(f"the memory layer is unavailable: {runtime.problems.get('memory', 'not opened')}")
    state, hashed = runtime.state, subject_hash(runtime.secret, tenant, subject)
    memories = await runtime.memory.export(tenant, subject)
    known = await known_upstream(runtime, tenant, subject, memories)
    await audit.append(state, tenant, "export", subject_hash=hashed, counts={"memories": len(memories)})
    trail: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        batch, more = await audit.entries(state, tenant, limit=500, after=after)
        trail.extend(entry for entry in batch if entry.get("subject") == hashed)
        if not more:
            break
        after = batch[-1]["id"]
    return {
        "object": "export",
        "subject": subject,
        "memories": [memory.model_dump(mode="json", exclude={"tenant"}) for memory in memories],
        "upstream": known.as_json(),
        "audit": trail,
    }


# --- command line (``memproxy forget | export | audit verify``) -------------------------------------


def cli_tenant(settings: Settings, secret: bytes, tenant: str | None, api_key: str | None) -> str:
    """``--tenant``, else ``MEMPROXY_TENANT``, else the tenant of ``--api-key`` (as the proxy derives it)."""
    from starlette.datastructures import Headers

    from proxy.identity import tenant_for

    if tenant:
        return tenant
    derived = tenant_for(Headers({"authorization": f"Bearer {api_key}"} if api_key else {}), settings, secret)
    if derived is None:
        raise ValueError("name the tenant: --tenant T, --api-key K (the application's key) or MEMPROXY_TENANT")
    return derived


def upstream_key(settings: Settings, api_key: str | None) -> str | None:
    """The credential for upstream calls: ``--api-key``, else ``MEMPROXY_LLM_API_KEY``."""
    if api_key:
        return api_key
    return settings.llm_api_key.get_secret_value() if settings.llm_api_key else None


def offline(settings: Settings) -> Settings:
    """A CLI command runs no worker of its own."""
    return settings.model_copy(update={"worker_in_proxy": False})


async def run_forget(
    settings: Settings, user: str, *, tenant: str | None, api_key: str | None, keep_upstream: bool
) -> ErasureReport:
    from proxy.runtime import open_runtime

    async with open_runtime(offline(settings)) as runtime:
        resolved = cli_tenant(settings, runtime.secret, tenant, api_key)
        return await erase_subject(
            runtime, resolved, user, api_key=upstream_key(settings, api_key), keep_upstream=keep_upstream
        )


async def run_export(settings: Settings, user: str, *, tenant: str | None, api_key: str | None) -> dict[str, Any]:
    from proxy.runtime import open_runtime

    async with open_runtime(offline(settings)) as runtime:
        return await export_subject(runtime, cli_tenant(settings, runtime.secret, tenant, api_key), user)


async def run_verify(settings: Settings, *, tenant: str | None, api_key: str | None) -> tuple[str, audit.Verdict]:
    from proxy.identity import load_secret
    from proxy.state import open_state

    resolved = cli_tenant(settings, load_secret(settings), tenant, api_key)
    async with await open_state(settings) as state:
        return resolved, await audit.verify(state, resolved)
