"""The extraction worker: claims ``extract`` jobs, mines each turn for memories, applies them, acks.

A job is one finished turn (:class:`proxy.learn.turn.Turn`, queued by the request hooks). The worker

1. claims it from the state store (SQLite or Redis; a lease of ``MEMPROXY_JOB_LEASE_SECONDS``),
2. looks up the subject's memories most similar to the turn's user messages (LLM extractor only),
3. runs the extractor (:mod:`proxy.learn.extract`): one LLM call, or the user's messages verbatim,
4. applies the operations through :class:`~proxy.memory.service.MemoryService` (add / update /
   delete; the source ids of the turn go with every new memory),
5. acks the job, only now that its effect is stored.

Any failure before the ack hands the job back with ``state.fail`` (retried with backoff, then
dead-lettered), except one: a job whose tenant has no API key in this process (no
``MEMPROXY_LLM_API_KEY``, and no live request of the tenant since the process started) is given back
to wait for the key (``state.wait_for_key``), which costs it no attempt; the tenant's next request
brings the key (:meth:`KeyRing.on_arrival`) and the worker releases the tenant's waiting jobs. With
several replicas and no operator key, a released job may be claimed by a replica that lacks the key
and wait again: it waits, it is never dead-lettered for it.

Delivery is at least once: a worker that dies between storing and acking leaves the job to be
delivered again, and the replay is harmless (exact and near duplicates are touched, not added; an
update to the same text is a no-op; a memory already deleted is skipped).

Runs in-process in ``memproxy serve`` (``MEMPROXY_WORKER_IN_PROXY``, started from the runtime) and
standalone as ``memproxy worker`` (both built by :func:`proxy.runtime.build_worker`). Log lines carry job ids, counts and error classes only: never a
turn's text, a memory or a key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from proxy.errors import MemproxyError
from proxy.fence import fenced
from proxy.learn.extract import (
    ExtractionError,
    Extractor,
    MemoryOp,
    NoCredentials,
)
from proxy.learn.keys import KeyRing
from proxy.learn.turn import JOB_KIND, Turn
from proxy.memory.models import Memory, Source
from proxy.memory.service import MemoryNotFound, MemoryService
from proxy.observe import NOOP, Observer, timed
from proxy.state import Job, State
from proxy.tracing import traced

if TYPE_CHECKING:
    from proxy.config import Settings

log = logging.getLogger("memproxy.worker")

SOURCE_FIELDS = ("thread_id", "run_id", "message_ids", "assistant_id")
SIMILAR_QUERIES = 4
"""User messages of a turn (the last ones) used as queries for similar memories."""
STOP_GRACE = 5.0


class JobPayloadError(MemproxyError):
    """The job's payload is not a turn (the job goes to the dead letters after its retries)."""


@dataclass
class WorkerStats:
    """Counters since the worker was made (metrics-ready: plain ints)."""

    claimed: int = 0
    processed: int = 0
    """Jobs acked: their operations are stored."""
    failed: int = 0
    """Jobs handed back with ``state.fail`` (a retry was scheduled, or they were dead-lettered)."""
    dead_lettered: int = 0
    lost: int = 0
    """Jobs whose lease was lost before the ack or fail (another worker has them now)."""
    ops: Counter[str] = field(default_factory=Counter)
    """Operations applied, by kind: add, update, delete."""
    unchanged: int = 0
    """Adds the memory already held (duplicates, touched instead)."""
    skipped: int = 0
    """Proposed operations not applied: unknown reference, memory gone, text refused."""
    fenced: int = 0
    """Jobs whose owner was erased after their turn began: nothing of them is stored (:mod:`proxy.fence`)."""
    waiting: int = 0
    """Jobs given back to wait for their tenant's API key (no attempt counted)."""
    released: int = 0
    """Waiting jobs made due again because their tenant's key arrived."""

    def snapshot(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "processed": self.processed,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost,
            "ops": {kind: self.ops.get(kind, 0) for kind in ("add", "update", "delete")},
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "fenced": self.fenced,
            "waiting": self.waiting,
            "released": self.released,
        }


def turn_of(job: Job, secret: bytes) -> Turn:
    """The job's turn; :class:`JobPayloadError` when the payload is not one."""
    try:
        turn = Turn.from_payload(dict(job.payload), secret)
    except ValueError:
        raise JobPayloadError("the job payload names no tenant and subject") from None
    except TypeError as exc:
        raise JobPayloadError(f"the job payload is not a turn ({type(exc).__name__})") from None
    if job.tenant is not None and job.tenant != turn.owner.tenant:
        raise JobPayloadError("the job's tenant and its payload's tenant differ")
    if not isinstance(turn.user, list) or not isinstance(turn.assistant, list):
        raise JobPayloadError("the job payload's messages are not lists")
    turn.user = [m for m in turn.user if isinstance(m, str)]
    turn.assistant = [m for m in turn.assistant if isinstance(m, str)]
    return turn


def source_of(turn: Turn, extractor: str) -> tuple[Source, dict[str, Any]]:
    """The memory's :class:`Source` (thread, run, message and assistant ids) and metadata (the rest)."""
    raw = {name: value for name, value in dict(turn.source or {}).items() if value is not None}
    known = {name: raw.pop(name) for name in SOURCE_FIELDS if name in raw}
    try:
        source = Source.model_validate(known)
    except ValidationError:
        source, raw = Source(), {**known, **raw}
    metadata: dict[str, Any] = {"route": turn.route, "turn_id": turn.turn_id, "extractor": extractor}
    if raw:
        metadata["source"] = raw
    return source, metadata


def describe(exc: BaseException, secrets: tuple[str | None, ...] = ()) -> str:
    """A failure as the job's error: our own messages as they are, other errors by class (and message)."""
    if isinstance(exc, ExtractionError | JobPayloadError):
        text = str(exc)
    else:
        detail = str(exc)[:200]
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


class Worker:
    """Drains ``extract`` jobs with ``concurrency`` loops; see the module docstring."""

    def __init__(
        self,
        state: State,
        memory: MemoryService,
        extractor: Extractor,
        settings: Settings,
        *,
        secret: bytes,
        keys: KeyRing | None = None,
        concurrency: int | None = None,
        poll_interval: float | None = None,
        lease_seconds: float | None = None,
        consumer: str | None = None,
        observer: Observer = NOOP,
    ) -> None:
        self.state = state
        self.memory = memory
        self.extractor = extractor
        self.settings = settings
        self.secret = secret
        """The server secret: the worker rebuilds each job's owner (and its pseudonym) with it."""
        self.observer = observer
        """Timings of the extractor calls (the in-process worker reports the runtime's)."""
        self.keys = keys if keys is not None else KeyRing(settings.extract_key_ttl)
        self.concurrency = max(1, concurrency if concurrency is not None else settings.worker_concurrency)
        self.poll_interval = poll_interval if poll_interval is not None else settings.worker_poll_interval
        self.lease_seconds = lease_seconds
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self.needs_key = extractor.needs_key or settings.embedder == "upstream"
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._claims_failing = False
        self._arrived: set[str] = set()
        """Tenants whose key arrived: their waiting jobs are released before the next claim."""
        self._release_all = settings.llm_api_key is not None
        """An operator key serves every tenant: jobs left waiting by an earlier run can all go."""
        self.keys.on_arrival(self._key_arrived)

    def __repr__(self) -> str:
        return f"Worker({self.consumer}, extractor={self.extractor.name}, concurrency={self.concurrency})"

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks)

    def start(self) -> Worker:
        """Start the claim loops as background tasks (in the running event loop)."""
        if self.running:
            return self
        self._stopping.clear()
        self._tasks = [
            asyncio.get_running_loop().create_task(self._loop(), name=f"memproxy-worker-{index}")
            for index in range(self.concurrency)
        ]
        log.info(
            "extraction worker %s started: extractor %s, %d loops", self.consumer, self.extractor.name, self.concurrency
        )
        return self

    def wake(self) -> None:
        """A job was queued: poll now instead of at the end of the idle interval."""
        self._wakeup.set()

    def request_stop(self) -> None:
        """Stop claiming (signal-handler safe); :meth:`stop` waits for the loops."""
        self._stopping.set()
        self._wakeup.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop claiming; running jobs get ``grace`` seconds to finish, then are abandoned.

        An abandoned job is neither acked nor failed: its lease expires and it is delivered again.
        """
        self.request_stop()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("extraction worker %s stopped (%d jobs abandoned)", self.consumer, len(pending))

    async def serve(self, grace: float = STOP_GRACE) -> None:
        """Run until :meth:`request_stop` (the ``memproxy worker`` command)."""
        self.start()
        await self._stopping.wait()
        await self.stop(grace)

    # --- claiming ----------------------------------------------------------------------------------

    def _can_work(self) -> bool:
        """False while no job could get a key: claiming would only park every job."""
        return not self.needs_key or self.settings.llm_api_key is not None or len(self.keys) > 0

    def _key_arrived(self, tenant: str) -> None:
        """A live request brought ``tenant``'s key (called by the key ring): release its waiting jobs."""
        self._arrived.add(tenant)
        self._wakeup.set()

    async def _release_arrived(self) -> None:
        """Make due the jobs waiting for keys that arrived; a failure is retried at the next claim."""
        if self._release_all:
            try:
                released = await self.state.release_waiting()
            except Exception as exc:  # noqa: BLE001 - the store may come back
                log.warning("releasing jobs waiting for a key failed (%s)", type(exc).__name__)
                return
            self._release_all = False
            self._note_released(released, "the configured key")
        while self._arrived:
            tenant = self._arrived.pop()
            try:
                released = await self.state.release_waiting(tenant)
            except Exception as exc:  # noqa: BLE001
                self._arrived.add(tenant)
                log.warning("releasing jobs waiting for a key failed (%s)", type(exc).__name__)
                return
            self._note_released(released, "their tenant's key")

    def _note_released(self, released: int, why: str) -> None:
        if released:
            self.stats.released += released
            log.info("%d jobs waiting for a key released: %s arrived", released, why)

    async def _idle(self) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout=self.poll_interval)
        except TimeoutError:
            pass
        self._wakeup.clear()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self._release_arrived()
            if not self._can_work():
                await self._idle()
                continue
            try:
                jobs = await self.state.claim(self.consumer, 1, self.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - the store may come back
                level = logging.DEBUG if self._claims_failing else logging.WARNING  # once per outage
                self._claims_failing = True
                log.log(
                    level, "claiming jobs failed (%s); retrying every %.1fs", type(exc).__name__, self.poll_interval
                )
                await self._idle()
                continue
            if self._claims_failing:
                self._claims_failing = False
                log.info("claiming jobs works again")
            if not jobs:
                await self._idle()
                continue
            for job in jobs:
                try:
                    await traced("memproxy.job", self.handle(job))  # a span while tracing (proxy.tracing)
                except Exception as exc:  # noqa: BLE001 - never let one job end the loop
                    log.error("job %s: unexpected %s in the worker", job.id, type(exc).__name__)

    async def run_once(self) -> int:
        """Claim up to ``concurrency`` due jobs and handle them; the number handled (tests, drains)."""
        await self._release_arrived()
        jobs = await self.state.claim(self.consumer, self.concurrency, self.lease_seconds)
        await asyncio.gather(*(traced("memproxy.job", self.handle(job)) for job in jobs))
        return len(jobs)

    async def drain(self) -> int:
        """Handle due jobs until none is left due; the number handled (retries not yet due stay)."""
        total = 0
        while handled := await self.run_once():
            total += handled
        return total

    # --- one job -----------------------------------------------------------------------------------

    async def handle(self, job: Job) -> bool:
        """Process one claimed job: apply its operations, then ack (True); on failure ``state.fail``."""
        self.stats.claimed += 1
        key: str | None = None
        tenant: str | None = None
        try:
            if job.kind != JOB_KIND:
                raise JobPayloadError(f"this worker handles {JOB_KIND!r} jobs, not {job.kind!r}")
            turn = turn_of(job, self.secret)
            tenant = turn.owner.tenant
            key = self._key_for(tenant)
            await self._extract_and_apply(job, turn, key)
        except NoCredentials:  # no attempt burnt: the job waits for a live request of its tenant
            await self._wait_for_key(job, tenant)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure: hand the job back (cancellation is not one)
            await self._fail(job, exc, key)
            return False
        try:
            acked = await self.state.ack(job)
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: ack failed (%s); it will be delivered again", job.id, type(exc).__name__)
            return False
        if acked:
            self.stats.processed += 1
        else:
            self.stats.lost += 1
            log.warning("job %s: lease lost before the ack; another delivery will replay it", job.id)
        return acked

    async def _wait_for_key(self, job: Job, tenant: str | None) -> None:
        """Give the job back until its tenant's key arrives (not an attempt: it cannot die of it)."""
        try:
            parked = await self.state.wait_for_key(job)
        except Exception as exc:  # noqa: BLE001 - the lease will expire and the job come back
            log.warning("job %s: giving it back to wait for a key failed (%s)", job.id, type(exc).__name__)
            return
        if not parked:
            self.stats.lost += 1
            return
        self.stats.waiting += 1
        log.info("job %s waits for a live request of its tenant: no API key in this process", job.id)
        if tenant is not None and self.keys.get(tenant) is not None:  # it arrived while the job was given back
            self._key_arrived(tenant)

    def _key_for(self, tenant: str) -> str | None:
        configured = self.settings.llm_api_key
        if configured is not None:
            return configured.get_secret_value()
        key = self.keys.get(tenant)
        if key is None and self.needs_key:
            raise NoCredentials(
                "no API key for this tenant in this process: set MEMPROXY_LLM_API_KEY, "
                "or the job waits for a live request of the tenant"
            )
        return key

    async def _similar(self, turn: Turn, key: str | None, assistant_id: str | None) -> list[Memory]:
        """The subject's memories nearest to the turn's (last few) user messages, best first."""
        best: dict[str, tuple[float, Memory]] = {}
        queries = [m for m in turn.user if m.strip()][-SIMILAR_QUERIES:]
        mine = self.memory.of(turn.owner)
        searches = [  # at once: the embedder takes their queries in one batch
            mine.similar(query, limit=self.settings.extract_similar, assistant_id=assistant_id, api_key=key)
            for query in queries
        ]
        for found in await asyncio.gather(*searches):
            for memory, score in found:
                if not memory.deleted and (memory.id not in best or best[memory.id][0] < score):
                    best[memory.id] = (score, memory)
        ranked = sorted(best.values(), key=lambda pair: -pair[0])
        return [memory for _, memory in ranked[: self.settings.extract_similar]]

    async def _extract_and_apply(self, job: Job, turn: Turn, key: str | None) -> None:
        began = turn.started_at or job.created_at
        if await fenced(self.state, turn.owner, began):
            self._fenced(job)
            return
        created: list[str] = []
        counts = await self._learn(job, turn, key, created)
        if created and await fenced(self.state, turn.owner, began):  # an erasure started while we wrote
            await self.memory.of(turn.owner).purge(created)
            self._fenced(job)
            return
        self.stats.ops.update({kind: counts[kind] for kind in ("add", "update", "delete") if counts[kind]})
        self.stats.unchanged += counts["unchanged"]
        self.stats.skipped += counts["skipped"]

    def _fenced(self, job: Job) -> None:
        self.stats.fenced += 1
        log.info("job %s: its owner was erased after the turn began; nothing stored", job.id)

    async def _learn(self, job: Job, turn: Turn, key: str | None, created: list[str]) -> Counter[str]:
        """Extract the turn's operations and apply them; ids of new memories go to ``created``."""
        source, metadata = source_of(turn, self.extractor.name)
        existing = await self._similar(turn, key, source.assistant_id) if self.extractor.uses_existing else []
        extraction = await timed(self.observer.extraction, self.extractor.extract(turn, existing, api_key=key))
        self.stats.skipped += extraction.dropped
        counts: Counter[str] = Counter()
        texts = [op.text for op in extraction.ops if op.op in ("add", "update") and op.text]
        vectors = await self.memory.embed_texts(texts, api_key=key)  # the turn's memories in one embedding call
        for op in extraction.ops:
            counts[await self._apply(turn, op, source, metadata, key, created, vectors)] += 1
        log.debug(
            "job %s (attempt %d): add %d, update %d, delete %d, unchanged %d, skipped %d",
            job.id,
            job.attempts,
            counts["add"],
            counts["update"],
            counts["delete"],
            counts["unchanged"],
            counts["skipped"] + extraction.dropped,
        )
        return counts

    async def _apply(
        self,
        turn: Turn,
        op: MemoryOp,
        source: Source,
        metadata: dict[str, Any],
        key: str | None,
        created: list[str],
        vectors: dict[str, list[float]],
    ) -> str:
        """Apply one operation; what happened: add, update, delete, unchanged or skipped."""
        mine = self.memory.of(turn.owner)
        try:
            if op.op == "add":
                assert op.text is not None
                memory, action = await mine.remember(
                    op.text,
                    kind=op.kind,
                    ttl=timedelta(days=op.ttl_days) if op.ttl_days else None,
                    source=source,
                    metadata=metadata,
                    assistant_id=source.assistant_id,
                    api_key=key,
                    vectors=vectors,
                )
                if action != "created":
                    return "unchanged"
                created.append(memory.id)
                return "add"
            assert op.memory_id is not None
            if op.op == "update":
                assert op.text is not None
                await mine.update(
                    op.memory_id,
                    op.text,
                    reason=f"extracted from {turn.route} turn {turn.turn_id}",
                    api_key=key,
                    vectors=vectors,
                )
                return "update"
            await mine.delete(op.memory_id, reason=op.reason)
            return "delete"
        except MemoryNotFound:  # deleted meanwhile, or by the first delivery of this very job
            return "skipped"
        except ValueError:  # text the service refuses (too long, empty after cleaning)
            return "skipped"

    async def _fail(self, job: Job, exc: BaseException, key: str | None) -> None:
        error = describe(exc, (key,))
        safe = isinstance(exc, ExtractionError | JobPayloadError)
        shown = error if safe else type(exc).__name__
        dead = job.attempts >= self.state.policy.max_attempts
        try:
            handed_back = await self.state.fail(job, error)
        except Exception as store_exc:  # noqa: BLE001 - the lease will expire and the job come back
            log.warning("job %s: recording its failure failed (%s)", job.id, type(store_exc).__name__)
            return
        if not handed_back:
            self.stats.lost += 1
            log.warning("job %s failed (%s) after its lease was lost", job.id, shown)
            return
        self.stats.failed += 1
        if dead:
            self.stats.dead_lettered += 1
            log.error("job %s dead-lettered after %d attempts: %s", job.id, job.attempts, shown)
        else:
            log.warning(
                "job %s failed (attempt %d of %d), retried later: %s",
                job.id,
                job.attempts,
                self.state.policy.max_attempts,
                shown,
            )


def standalone_problem(settings: Settings) -> str | None:
    """Why ``memproxy worker`` cannot run with these settings, or None.

    A separate worker process sees no live request, so its key ring stays empty: whatever needs an
    upstream key (the LLM extractor, the upstream embedder) needs ``MEMPROXY_LLM_API_KEY``.
    """
    if settings.llm_api_key is None and (settings.extractor == "llm" or settings.embedder == "upstream"):
        return (
            "a standalone worker sees no client requests, so it has no API key for the upstream: "
            "set MEMPROXY_LLM_API_KEY (or use MEMPROXY_EXTRACTOR=verbatim with the local embedder)"
        )
    return None
