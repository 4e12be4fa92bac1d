"""Migrate existing threads into memory: read every message upstream, extract facts chunk by chunk.

For each thread (Assistants ``thread_...``, a bridge thread, or a Conversations ``conv_...``), all
messages are paged through oldest first (Assistants ``GET /threads/{t}/messages?order=asc&after=``,
Conversations ``GET /conversations/{c}/items``; 100 per page, no cap on the total). Messages are
cut into chunks of ``MEMPROXY_MIGRATE_CHUNK_MESSAGES`` (a message longer than
``MEMPROXY_MIGRATE_MESSAGE_CHARS`` is split into parts, never truncated; a chunk holds whole
messages), and each chunk runs through the configured extractor as one :class:`~proxy.learn.turn.Turn`
(route ``migration``, turn id ``migrate:{thread}:{chunk}``) whose facts carry their source: the
thread id and the chunk's message ids.

Resumable: after each chunk the thread's cursor (last message id, next chunk index) is saved in
the state store, so a crashed or interrupted migration continues where it stopped. Idempotent:
a chunk's turn id is marked done once stored (a replayed chunk is skipped), the memory service
dedupes by content hash, and a second run finds nothing after the cursor. Cursor and markers are
indexed under the subject, so erasing the subject removes them too.

Nothing here logs a message body or a key: thread ids, counts and error classes only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from proxy.assistants.engine import THREADS
from proxy.errors import MemproxyError
from proxy.ids import InvalidId, upstream_path
from proxy.learn.turn import JOB_KIND, Turn, message_text
from proxy.owner import Owner
from proxy.ownership import Kind, credential_headers, known_upstream, record
from proxy.runtime import build_worker
from proxy.state import Job

if TYPE_CHECKING:
    from proxy.learn.worker import Worker
    from proxy.runtime import Runtime

log = logging.getLogger("memproxy.migrate")

CURSOR_NS = "migration_cursor"
DONE_NS = "migration_done"
PAGE = 100

Progress = Callable[[str, int, int], None]
"""``progress(thread, messages_read_this_run, chunks_done_this_run)`` after every chunk."""


class MigrationError(MemproxyError):
    """A thread cannot be read (unknown, refused, unreachable); the message is safe to show."""


@dataclass
class Message:
    id: str
    role: str
    text: str


@dataclass
class ThreadResult:
    thread: str
    status: str = "done"  # done | stopped | failed
    messages: int = 0
    chunks: int = 0
    skipped_chunks: int = 0
    added: int = 0
    unchanged: int = 0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Summary:
    subject_hash: str
    threads: list[ThreadResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.status != "failed" for result in self.threads)

    def as_json(self) -> dict[str, Any]:
        totals = {name: sum(getattr(r, name) for r in self.threads) for name in ("messages", "chunks", "added")}
        return {
            "object": "migration",
            "subject": self.subject_hash,
            "ok": self.ok,
            "totals": totals,
            "threads": [result.as_json() for result in self.threads],
        }


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at whitespace where possible; nothing lost."""
    limit = max(1, limit)
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = rest.rfind(" ", limit // 2, limit + 1)
        cut = cut if cut > 0 else limit
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


class ThreadReader:
    """Pages of one thread's messages, oldest first, after a message id."""

    def __init__(self, runtime: Runtime, tenant: str, thread: str, headers: dict[str, str]) -> None:
        self.runtime, self.tenant, self.thread, self.headers = runtime, tenant, thread, headers

    async def _path(self) -> tuple[str, str]:
        if self.thread.startswith("conv_"):
            return upstream_path("/conversations/{c}/items", c=self.thread), "items"
        if self.runtime.settings.assistants_mode == "bridge":
            record = await self.runtime.state.get_record(self.tenant, THREADS, self.thread)
            if record is None:
                raise MigrationError(f"no thread found with id '{self.thread}'")
            return upstream_path("/conversations/{c}/items", c=record["conversation_id"]), "items"
        return upstream_path("/threads/{t}/messages", t=self.thread), "messages"

    async def pages(self, after: str | None) -> AsyncIterator[list[Message]]:
        path, kind = await self._path()
        url = self.runtime.settings.upstream_url.rstrip("/") + path
        while True:
            params: dict[str, Any] = {"order": "asc", "limit": PAGE, **({"after": after} if after else {})}
            try:
                response = await self.runtime.http.get(url, params=params, headers=self.headers)
            except httpx2.HTTPError as exc:
                raise MigrationError(f"upstream unreachable ({type(exc).__name__})") from None
            if response.status_code >= 400:
                raise MigrationError(f"upstream answered {response.status_code}")
            page = response.json()
            data = [entry for entry in page.get("data") or [] if isinstance(entry, dict) and entry.get("id")]
            messages = [
                Message(entry["id"], str(entry.get("role")), message_text(entry.get("content")))
                for entry in data
                if kind == "messages" or entry.get("type") == "message"
            ]
            if data:
                yield messages
                after = data[-1]["id"]
            if not data or not page.get("has_more"):
                return


async def chunks(
    source: ThreadReader, after: str | None, size: int, max_chars: int
) -> AsyncIterator[tuple[list[Message], list[tuple[str, str]]]]:
    """Chunks of whole messages: (the messages, their (role, part) units), at least ``size`` units each."""
    batch: list[Message] = []
    units: list[tuple[str, str]] = []
    async for page in source.pages(after):
        for message in page:
            batch.append(message)
            units.extend((message.role, part) for part in split_text(message.text, max_chars))
            if len(units) >= size:
                yield batch, units
                batch, units = [], []
    if batch:
        yield batch, units


class Migration:
    """Migrates threads of one subject; one extractor (a worker's) for every chunk."""

    def __init__(
        self,
        runtime: Runtime,
        owner: Owner,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        worker: Worker | None = None,
    ) -> None:
        self.runtime, self.owner = runtime, owner
        self.started_at = time.time()  # an erasure from now on fences every chunk of this migration
        self.mine = runtime.state.tenant(owner.tenant)
        self.headers = credential_headers(api_key, headers)
        settings = runtime.settings
        self.key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else api_key
        if self.key is None and "authorization" in self.headers:
            self.key = self.headers["authorization"].partition(" ")[2] or None
        self.worker = worker or build_worker(runtime)

    def _key(self, thread: str) -> str:
        return f"{self.owner.hash}:{thread}"

    async def cursor(self, thread: str) -> dict[str, Any]:
        saved = await self.mine.get(CURSOR_NS, self._key(thread))
        return saved if isinstance(saved, dict) else {"after": None, "chunk": 0, "messages": 0}

    async def run(
        self, threads: list[str], *, max_chunks: int | None = None, progress: Progress | None = None
    ) -> Summary:
        """Migrate ``threads`` in order; ``max_chunks`` stops after that many chunks (tests, dry runs)."""
        summary = Summary(self.owner.hash)
        budget = max_chunks
        for thread in dict.fromkeys(threads):
            result = await self.thread(thread, budget, progress)
            summary.threads.append(result)
            if budget is not None:
                budget -= result.chunks
                if budget <= 0:
                    break
        return summary

    async def thread(self, thread: str, budget: int | None, progress: Progress | None) -> ThreadResult:
        settings, state = self.runtime.settings, self.mine
        result = ThreadResult(thread)
        cursor = await self.cursor(thread)
        source = ThreadReader(self.runtime, self.owner.tenant, thread, self.headers)
        index = int(cursor["chunk"])
        try:
            async for batch, units in chunks(
                source, cursor["after"], settings.migrate_chunk_messages, settings.migrate_message_chars
            ):
                if budget is not None and result.chunks >= budget:
                    result.status = "stopped"
                    break
                turn_id = f"migrate:{thread}:{index}"
                if await state.set_contains(DONE_NS, self._key(thread), turn_id):
                    result.skipped_chunks += 1
                else:
                    await self._extract(thread, turn_id, batch, units, result)
                    await state.set_add(DONE_NS, self._key(thread), turn_id, subject=self.owner)
                index += 1
                result.chunks += 1
                result.messages += len(batch)
                cursor = {"after": batch[-1].id, "chunk": index, "messages": int(cursor["messages"]) + len(batch)}
                await state.set(CURSOR_NS, self._key(thread), cursor, subject=self.owner)
                if progress is not None:
                    progress(thread, result.messages, result.chunks)
        except (MigrationError, InvalidId) as exc:
            result.status, result.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - one thread's failure must not stop the others
            result.status, result.error = "failed", type(exc).__name__
        if result.status != "failed":  # read with the caller's credential: the owner's, by the caller's word
            kind: Kind = "conversation" if thread.startswith("conv_") else "thread"
            await record(self.runtime.state, self.owner, kind, thread, self.runtime.route)
        log.info(
            "migration of %s for %s: %s, %d messages, %d chunks, %d added",
            thread,
            self.owner.hash,
            result.status,
            result.messages,
            result.chunks,
            result.added,
        )
        return result

    async def _extract(
        self, thread: str, turn_id: str, batch: list[Message], units: list[tuple[str, str]], result: ThreadResult
    ) -> None:
        user = [text for role, text in units if role == "user"]
        if not user:
            return  # nothing the user said: nothing to learn about them
        assistant = [text for role, text in units if role == "assistant"]
        source = {"thread_id": thread, "message_ids": [message.id for message in batch]}
        turn = Turn(self.owner, "migration", turn_id, user, assistant, source, started_at=self.started_at)
        stats = self.worker.stats
        added, unchanged = stats.ops["add"], stats.unchanged
        job = Job(id=turn_id, kind=JOB_KIND, payload={}, attempts=1)
        await self.worker._extract_and_apply(job, turn, self.key)
        result.added += stats.ops["add"] - added
        result.unchanged += stats.unchanged - unchanged


async def seen_threads(runtime: Runtime, owner: Owner) -> list[str]:
    """Every thread and conversation the proxy has seen for the owner."""
    known = await known_upstream(runtime.state, owner, runtime.route)
    return sorted(known.threads) + sorted(known.conversations)
