"""The spool: finished turns kept on local disk while the state store cannot take them.

When the state store (Redis, or SQLite) refuses a finished turn's job, the capture hook writes the
turn here instead of losing it, and the runtime delivers the spool into the job queue, oldest first,
once the store answers again (:func:`deliver`). While anything is spooled, new turns queue up behind
it, so turns reach the queue in the order they finished.

One SQLite file under the data directory (``spool.sqlite3``), created at the first spooled turn:
every append is its own transaction with ``synchronous=FULL`` (fsynced before the hook returns), so
a spooled turn survives a crash of the proxy. A row holds what the job would hold (the turn's payload:
tenant, subject, messages, ids, never a credential: :meth:`Spool.append` refuses one, as the job
queue does) plus the owner's pseudonym, so an erasure drops an owner's spooled turns
(:meth:`Spool.drop`) like their pending jobs; deleted rows are overwritten (``secure_delete``) and the
write-ahead log is truncated after an erasure. Delivery is at least once: a turn queued but not yet
removed when the proxy dies is queued again at the next start, and the job queue's idempotency key
(tenant + turn id) makes the second one a no-op.

The spool is local to one process's data directory: a replica whose disk goes (a Kubernetes
``emptyDir`` when its pod is deleted) takes its undelivered turns with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from proxy.learn.turn import Turn, enqueue_turn
from proxy.owner import Owner
from proxy.state import State
from proxy.state.base import find_credentials

log = logging.getLogger("memproxy.spool")

T = TypeVar("T")

SPOOL_FILE = "spool.sqlite3"
BATCH = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, subject_hash TEXT NOT NULL,
    payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS turns_owner ON turns (tenant, subject_hash);
"""


@dataclass(frozen=True)
class Spooled:
    """One spooled turn: its place in the spool and its job payload."""

    seq: int
    payload: dict[str, Any]


class Spool:
    """Finished turns waiting on local disk for the state store; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = 0
        """Turns spooled and not yet delivered or dropped (kept in step by this process; the file is the truth)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-spool")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> Spool:
        """The spool at ``path``; the file is created by the first append, read now if it exists."""
        spool = cls(path)
        if path.exists():
            try:
                spool.pending = await spool.depth()
            except sqlite3.Error as exc:  # fail open: the proxy serves; turns it cannot spool are counted lost
                log.error("the spool at %s is unreadable (%s): turns it cannot take are lost", path, exc)
        return spool

    def __repr__(self) -> str:
        return f"Spool({self.path}, {self.pending} pending)"

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)

    # --- storage -------------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is None:
            if not create and not self.path.exists():
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # each append reaches the disk before the hook returns
            conn.execute("PRAGMA secure_delete=ON")  # a dropped turn's text does not linger in free pages
            conn.executescript(SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], default: T, *, create: bool = False) -> T:
        """``fn(conn)`` as one transaction on the spool's thread; ``default`` when there is no spool file."""

        def call() -> T:
            conn = self._connect(create)
            if conn is None:
                return default
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # --- the spool's operations ------------------------------------------------------------------

    async def append(self, turn: Turn) -> None:
        """Keep ``turn`` durably (fsynced) until it can be queued; ValueError if it carries a credential."""
        payload = turn.payload()
        found = find_credentials(payload)
        if found:
            raise ValueError(f"spooled turns never carry credentials ({found})")
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        owner = turn.owner

        def run(conn: sqlite3.Connection) -> None:
            sql = "INSERT INTO turns (tenant, subject_hash, payload) VALUES (?, ?, ?)"
            conn.execute(sql, (owner.tenant, owner.hash, raw))

        await self._run(run, None, create=True)
        self.pending += 1

    async def oldest(self, limit: int = BATCH) -> list[Spooled]:
        """Up to ``limit`` spooled turns, oldest first."""

        def run(conn: sqlite3.Connection) -> list[Spooled]:
            rows = conn.execute("SELECT seq, payload FROM turns ORDER BY seq LIMIT ?", (limit,)).fetchall()
            return [Spooled(seq, json.loads(payload)) for seq, payload in rows]

        none: list[Spooled] = []
        found = await self._run(run, none)
        if not found:
            self.pending = 0
        return found

    async def remove(self, seq: int) -> None:
        """Forget a turn once the state store holds its job."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM turns WHERE seq = ?", (seq,)).rowcount

        if await self._run(run, 0):
            self.pending = max(0, self.pending - 1)

    async def drop(self, owner: Owner) -> int:
        """Erase every spooled turn of ``owner`` (GDPR erasure); how many went."""

        def run(conn: sqlite3.Connection) -> int:
            sql = "DELETE FROM turns WHERE tenant = ? AND subject_hash = ?"
            return conn.execute(sql, (owner.tenant, owner.hash)).rowcount

        dropped = await self._run(run, 0)
        if dropped:
            self.pending = max(0, self.pending - dropped)
            await self._truncate_log()
        return dropped

    async def _truncate_log(self) -> None:
        """Checkpoint the write-ahead log and empty it: the erased rows' old pages go with it."""

        def call() -> None:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def depth(self) -> int:
        """Turns in the spool file now."""

        def run(conn: sqlite3.Connection) -> int:
            count: int = conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
            return count

        return await self._run(run, 0)


async def deliver(
    spool: Spool,
    state: State,
    secret: bytes,
    batch: int = BATCH,
    on_delivered: Callable[[], None] | None = None,
) -> int:
    """Queue the spooled turns in the order they were spooled; how many were delivered.

    Each turn leaves the spool only once the state store holds its job (``on_delivered`` is called
    then, for exact counts); the first failure stops the delivery and raises, leaving that turn and
    those after it spooled for the next try.
    """
    delivered = 0
    while found := await spool.oldest(batch):
        for item in found:
            try:
                turn = Turn.from_payload(dict(item.payload), secret)
            except (ValueError, TypeError) as exc:  # nothing this process spooled: never retried forever
                log.error("spooled turn %d is not a turn (%s): dropped", item.seq, type(exc).__name__)
                await spool.remove(item.seq)
                continue
            await enqueue_turn(state, turn)
            await spool.remove(item.seq)
            delivered += 1
            if on_delivered is not None:
                on_delivered()
    return delivered
