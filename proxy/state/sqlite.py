"""SQLite backend: the embedded default, one file under the data directory, durable across restarts.

sqlite3 blocks, so every call runs on one dedicated thread that owns the connection: calls are
serialized without a lock and the event loop never waits on the disk. Each call is one
``BEGIN IMMEDIATE`` transaction; with WAL and ``busy_timeout`` a second process on the same file
(``memproxy worker`` next to ``memproxy serve``) waits for the write lock instead of failing, so a
job is never leased twice. ``synchronous=FULL``: a committed job survives a power cut, not only a
crash.

Jobs are rows with a visibility time: claiming moves ``visible_at`` to the lease deadline, so an
expired lease needs no janitor; the row is simply due again. A job waiting for its tenant's key has
status ``waiting`` (never claimed) until :meth:`State.release_waiting` makes it ``ready`` again.

A chained append (:meth:`State.append_chained`) is one such transaction: ``BEGIN IMMEDIATE`` takes
the write lock before the head is read, so appends of every process on the file queue up behind
each other and each builds on the head the previous one stored.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from proxy.state.base import (
    CHAIN_HEAD_NS,
    ChainHead,
    Clock,
    Job,
    JobPolicy,
    MakeLink,
    State,
    UnknownCursor,
    chain_head_key,
    decode,
    encode,
    implied_head,
    redis_slice,
)

T = TypeVar("T")
Args = TypeVarTuple("Args")

PURGE_INTERVAL = 60.0
"""Seconds between sweeps of expired keys that nobody reads again (reads expire keys lazily)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv_keys (
    ns TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, value TEXT, expires_at REAL,
    PRIMARY KEY (ns, key));
CREATE INDEX IF NOT EXISTS kv_keys_expiry ON kv_keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS kv_list (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS kv_list_key ON kv_list (ns, key);
CREATE TABLE IF NOT EXISTS kv_set (
    ns TEXT NOT NULL, key TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (ns, key, member));
CREATE TABLE IF NOT EXISTS records (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (tenant, collection, id));
CREATE INDEX IF NOT EXISTS records_order ON records (tenant, collection);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, payload TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT, tenant TEXT, subject_hash TEXT,
    status TEXT NOT NULL, visible_at REAL NOT NULL, consumer TEXT, last_error TEXT,
    created_at REAL NOT NULL, finished_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status != 'dead';
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, visible_at);
"""

JOB_COLUMNS = "id, kind, payload, attempts, idempotency_key, tenant, subject_hash, visible_at, last_error, created_at"
LEASE_HELD = "id = ? AND attempts = ? AND status = 'ready'"


def _job(row: tuple[Any, ...]) -> Job:
    id, kind, payload, attempts, idem, tenant, subject_hash, visible_at, error, created_at = row
    return Job(
        id=id,
        kind=kind,
        payload=decode(payload) or {},
        attempts=attempts,
        idempotency_key=idem,
        tenant=tenant,
        subject_hash=subject_hash,
        visible_at=visible_at,
        last_error=error,
        created_at=created_at,
    )


class SqliteState(State):
    """State in one SQLite file; see the module docstring for the concurrency model."""

    def __init__(self, path: Path, *, clock: Clock | None = None, policy: JobPolicy | None = None) -> None:
        super().__init__(clock=clock, policy=policy)
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memproxy-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._last_purge = float("-inf")

    @classmethod
    async def open(
        cls, path: Path | str, *, clock: Clock | None = None, policy: JobPolicy | None = None
    ) -> SqliteState:
        """Open (creating if needed) the database file and its schema."""
        state = cls(Path(path), clock=clock, policy=policy)
        await asyncio.get_running_loop().run_in_executor(state._executor, state._connect)
        return state

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free pages
        conn.executescript(SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[[sqlite3.Connection, *Args], T], *args: *Args) -> T:
        """Run ``fn(conn, *args)`` as one write transaction on the connection's thread."""
        if self._conn is None:
            raise RuntimeError("state store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, fn, args)

    def _transaction(self, fn: Callable[[sqlite3.Connection, *Args], T], args: tuple[*Args]) -> T:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # --- key/value helpers (run on the connection's thread) ------------------------------------

    def _kind(self, conn: sqlite3.Connection, ns: str, key: str, now: float) -> str | None:
        """The kind of a live key; an expired key is removed on sight, as Redis does."""
        row = conn.execute("SELECT kind, expires_at FROM kv_keys WHERE ns = ? AND key = ?", (ns, key)).fetchone()
        if row is None:
            return None
        if row[1] is not None and row[1] <= now:
            self._drop_key(conn, ns, key)
            return None
        kind: str = row[0]
        return kind

    @staticmethod
    def _drop_key(conn: sqlite3.Connection, ns: str, key: str) -> None:
        for table in ("kv_keys", "kv_list", "kv_set"):
            conn.execute(f"DELETE FROM {table} WHERE ns = ? AND key = ?", (ns, key))

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        expired = conn.execute("SELECT ns, key FROM kv_keys WHERE expires_at <= ?", (now,)).fetchall()
        for ns, key in expired:
            self._drop_key(conn, ns, key)

    def _ensure(self, conn: sqlite3.Connection, ns: str, key: str, kind: str, ttl: float | None, now: float) -> None:
        """Create a list/set key if absent; refresh its expiry when a TTL is given."""
        self._purge(conn, now)
        current = self._kind(conn, ns, key, now)
        expires = now + ttl if ttl is not None else None
        if current is None:
            conn.execute(
                "INSERT INTO kv_keys (ns, key, kind, expires_at) VALUES (?, ?, ?, ?)", (ns, key, kind, expires)
            )
        elif current != kind:
            raise TypeError(f"{ns}/{key} holds a {current}, not a {kind}")
        elif ttl is not None:
            conn.execute("UPDATE kv_keys SET expires_at = ? WHERE ns = ? AND key = ?", (expires, ns, key))

    def _value(self, conn: sqlite3.Connection, ns: str, key: str, now: float) -> str | None:
        if self._kind(conn, ns, key, now) != "value":
            return None
        value: str | None = conn.execute("SELECT value FROM kv_keys WHERE ns = ? AND key = ?", (ns, key)).fetchone()[0]
        return value

    def _write_value(
        self, conn: sqlite3.Connection, ns: str, key: str, raw: str, ttl: float | None, now: float
    ) -> None:
        self._purge(conn, now)
        self._drop_key(conn, ns, key)
        expires = now + ttl if ttl is not None else None
        conn.execute(
            "INSERT INTO kv_keys (ns, key, kind, value, expires_at) VALUES (?, ?, 'value', ?, ?)",
            (ns, key, raw, expires),
        )

    # --- key/value -----------------------------------------------------------------------------

    async def _get(self, ns: str, key: str) -> str | None:
        return await self._run(self._value, ns, key, self.clock())

    async def _set(self, ns: str, key: str, raw: str, ttl: float | None) -> None:
        await self._run(self._write_value, ns, key, raw, ttl, self.clock())

    async def _set_new(self, ns: str, key: str, raw: str) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            if self._kind(conn, ns, key, now) is not None:
                return False
            conn.execute("INSERT INTO kv_keys (ns, key, kind, value) VALUES (?, ?, 'value', ?)", (ns, key, raw))
            return True

        return await self._run(run, self.clock())

    async def compact(self) -> None:
        """Copy the write-ahead log into the database file and truncate it to zero bytes.

        Runs outside a transaction (a checkpoint cannot run inside one); waits for readers of other
        processes up to the busy timeout.
        """
        if self._conn is None:
            raise RuntimeError("state store is closed")
        conn = self._conn
        await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        )

    async def delete(self, ns: str, key: str) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            if self._kind(conn, ns, key, now) is None:
                return False
            self._drop_key(conn, ns, key)
            return True

        return await self._run(run, self.clock())

    async def expire(self, ns: str, key: str, ttl: float | None) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            if self._kind(conn, ns, key, now) is None:
                return False
            expires = now + ttl if ttl is not None else None
            conn.execute("UPDATE kv_keys SET expires_at = ? WHERE ns = ? AND key = ?", (expires, ns, key))
            return True

        return await self._run(run, self.clock())

    async def _list_push(self, ns: str, key: str, raws: list[str], max_len: int | None, ttl: float | None) -> int:
        def run(conn: sqlite3.Connection, now: float) -> int:
            self._ensure(conn, ns, key, "list", ttl, now)
            conn.executemany("INSERT INTO kv_list (ns, key, value) VALUES (?, ?, ?)", [(ns, key, r) for r in raws])
            if max_len is not None:
                conn.execute(
                    "DELETE FROM kv_list WHERE ns = ? AND key = ? AND id NOT IN "
                    "(SELECT id FROM kv_list WHERE ns = ? AND key = ? ORDER BY id DESC LIMIT ?)",
                    (ns, key, ns, key, max_len),
                )
            length: int = conn.execute("SELECT COUNT(*) FROM kv_list WHERE ns = ? AND key = ?", (ns, key)).fetchone()[0]
            return length

        return await self._run(run, self.clock())

    async def _list_range(self, ns: str, key: str, start: int, stop: int) -> list[str]:
        def run(conn: sqlite3.Connection, now: float) -> list[str]:
            if self._kind(conn, ns, key, now) != "list":
                return []
            rows = conn.execute("SELECT value FROM kv_list WHERE ns = ? AND key = ? ORDER BY id", (ns, key))
            return redis_slice([r[0] for r in rows], start, stop)

        return await self._run(run, self.clock())

    async def _set_add(self, ns: str, key: str, members: list[str], ttl: float | None) -> int:
        def run(conn: sqlite3.Connection, now: float) -> int:
            self._ensure(conn, ns, key, "set", ttl, now)
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO kv_set (ns, key, member) VALUES (?, ?, ?)", [(ns, key, m) for m in members]
            )
            return conn.total_changes - before

        return await self._run(run, self.clock())

    async def _set_remove(self, ns: str, key: str, members: list[str]) -> int:
        def run(conn: sqlite3.Connection, now: float) -> int:
            if self._kind(conn, ns, key, now) != "set":
                return 0
            before = conn.total_changes
            conn.executemany(
                "DELETE FROM kv_set WHERE ns = ? AND key = ? AND member = ?", [(ns, key, m) for m in members]
            )
            removed = conn.total_changes - before
            if conn.execute("SELECT 1 FROM kv_set WHERE ns = ? AND key = ? LIMIT 1", (ns, key)).fetchone() is None:
                self._drop_key(conn, ns, key)
            return removed

        return await self._run(run, self.clock())

    async def set_members(self, ns: str, key: str) -> set[str]:
        def run(conn: sqlite3.Connection, now: float) -> set[str]:
            if self._kind(conn, ns, key, now) != "set":
                return set()
            return {r[0] for r in conn.execute("SELECT member FROM kv_set WHERE ns = ? AND key = ?", (ns, key))}

        return await self._run(run, self.clock())

    async def set_contains(self, ns: str, key: str, member: str) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            if self._kind(conn, ns, key, now) != "set":
                return False
            sql = "SELECT 1 FROM kv_set WHERE ns = ? AND key = ? AND member = ?"
            return conn.execute(sql, (ns, key, member)).fetchone() is not None

        return await self._run(run, self.clock())

    # --- records -------------------------------------------------------------------------------
    # Creation order is the rowid: an upsert keeps it, and the (tenant, collection) index is
    # ordered by rowid within each collection.

    @staticmethod
    def _upsert_record(conn: sqlite3.Connection, tenant: str, collection: str, id: str, raw: str) -> None:
        conn.execute(
            "INSERT INTO records (tenant, collection, id, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant, collection, id) DO UPDATE SET body = excluded.body",
            (tenant, collection, id, raw),
        )

    @staticmethod
    def _scan(
        conn: sqlite3.Connection, tenant: str, collection: str, ascending: bool, cursor: str | None, limit: int
    ) -> list[str]:
        bound = -1 if ascending else 2**63 - 1
        if cursor is not None:
            sql = "SELECT rowid FROM records WHERE tenant = ? AND collection = ? AND id = ?"
            row = conn.execute(sql, (tenant, collection, cursor)).fetchone()
            if row is None:
                raise UnknownCursor(cursor)
            bound = row[0]
        op, direction = (">", "ASC") if ascending else ("<", "DESC")
        sql = (
            f"SELECT body FROM records WHERE tenant = ? AND collection = ? AND rowid {op} ? "
            f"ORDER BY rowid {direction} LIMIT ?"
        )
        return [r[0] for r in conn.execute(sql, (tenant, collection, bound, limit))]

    async def _put_record(self, tenant: str, collection: str, id: str, raw: str) -> None:
        await self._run(self._upsert_record, tenant, collection, id, raw)

    async def _get_record(self, tenant: str, collection: str, id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            sql = "SELECT body FROM records WHERE tenant = ? AND collection = ? AND id = ?"
            row = conn.execute(sql, (tenant, collection, id)).fetchone()
            return row[0] if row else None

        return await self._run(run)

    async def delete_record(self, tenant: str, collection: str, id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            sql = "DELETE FROM records WHERE tenant = ? AND collection = ? AND id = ?"
            return conn.execute(sql, (tenant, collection, id)).rowcount > 0

        return await self._run(run)

    async def _scan_records(
        self, tenant: str, collection: str, ascending: bool, cursor: str | None, limit: int
    ) -> list[str]:
        return await self._run(self._scan, tenant, collection, ascending, cursor, limit)

    async def _append_chained(self, tenant: str, collection: str, make: MakeLink) -> dict[str, Any]:
        key = chain_head_key(tenant, collection)

        def run(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
            stored = self._value(conn, CHAIN_HEAD_NS, key, now)
            head = (
                ChainHead.decode(stored)
                if stored
                else implied_head(self._scan(conn, tenant, collection, False, None, 1))
            )
            record = make(head)
            self._upsert_record(conn, tenant, collection, record["id"], encode(record))
            self._write_value(conn, CHAIN_HEAD_NS, key, ChainHead.of(record).encode(), None, now)
            return record

        return await self._run(run, self.clock())

    # --- jobs ----------------------------------------------------------------------------------

    async def _enqueue(self, job: Job) -> str:
        [job_id] = await self._enqueue_many([job])
        return job_id

    async def _enqueue_many(self, jobs: list[Job]) -> list[str]:
        """All of ``jobs`` in one transaction: one commit (one fsync) however many."""

        def run(conn: sqlite3.Connection) -> list[str]:
            horizon = min(job.created_at for job in jobs) - self.policy.idempotency_retention
            conn.execute("DELETE FROM jobs WHERE status = 'done' AND finished_at < ?", (horizon,))
            return [self._insert_job(conn, job) for job in jobs]

        return await self._run(run)

    @staticmethod
    def _insert_job(conn: sqlite3.Connection, job: Job) -> str:
        """Insert ``job``; its id, or the id of the job already holding its idempotency key."""
        before = conn.total_changes
        conn.execute(
            "INSERT OR IGNORE INTO jobs (id, kind, payload, idempotency_key, tenant, subject_hash, status,"
            " visible_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'ready', ?, ?)",
            (
                job.id,
                job.kind,
                encode(job.payload),
                job.idempotency_key,
                job.tenant,
                job.subject_hash,
                job.visible_at,
                job.created_at,
            ),
        )
        if conn.total_changes > before:
            return job.id
        sql = "SELECT id FROM jobs WHERE idempotency_key = ? AND status != 'dead'"
        existing: str = conn.execute(sql, (job.idempotency_key,)).fetchone()[0]
        return existing

    async def _claim(self, consumer: str, count: int, lease: float) -> list[Job]:
        def run(conn: sqlite3.Connection, now: float) -> list[Job]:
            rows = conn.execute(
                "UPDATE jobs SET attempts = attempts + 1, visible_at = ?, consumer = ? WHERE seq IN "
                "(SELECT seq FROM jobs WHERE status = 'ready' AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?) "
                f"RETURNING seq, {JOB_COLUMNS}",
                (now + lease, consumer, now, count),
            ).fetchall()
            return [_job(row[1:]) for row in sorted(rows)]

        return await self._run(run, self.clock())

    async def ack(self, job: Job) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            if job.idempotency_key is None:
                return conn.execute(f"DELETE FROM jobs WHERE {LEASE_HELD}", (job.id, job.attempts)).rowcount > 0
            sql = f"UPDATE jobs SET status = 'done', payload = NULL, finished_at = ? WHERE {LEASE_HELD}"
            return conn.execute(sql, (now, job.id, job.attempts)).rowcount > 0

        return await self._run(run, self.clock())

    async def _retry(self, job: Job, error: str, visible_at: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            sql = f"UPDATE jobs SET visible_at = ?, last_error = ?, consumer = NULL WHERE {LEASE_HELD}"
            return conn.execute(sql, (visible_at, error, job.id, job.attempts)).rowcount > 0

        return await self._run(run)

    async def _bury(self, job: Job, error: str) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            sql = f"UPDATE jobs SET status = 'dead', last_error = ?, finished_at = ? WHERE {LEASE_HELD}"
            return conn.execute(sql, (error, now, job.id, job.attempts)).rowcount > 0

        return await self._run(run, self.clock())

    async def _park(self, job: Job) -> bool:
        def run(conn: sqlite3.Connection, now: float) -> bool:
            sql = (
                "UPDATE jobs SET status = 'waiting', attempts = attempts - 1, visible_at = ?, consumer = NULL "
                f"WHERE {LEASE_HELD}"
            )
            return conn.execute(sql, (now, job.id, job.attempts)).rowcount > 0

        return await self._run(run, self.clock())

    async def _release(self, tenant: str | None) -> int:
        def run(conn: sqlite3.Connection, now: float) -> int:
            if tenant is None:
                sql, args = "UPDATE jobs SET status = 'ready', visible_at = ? WHERE status = 'waiting'", (now,)
                return conn.execute(sql, args).rowcount
            sql = "UPDATE jobs SET status = 'ready', visible_at = ? WHERE status = 'waiting' AND tenant = ?"
            return conn.execute(sql, (now, tenant)).rowcount

        return await self._run(run, self.clock())

    async def waiting_count(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            waiting: int = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'waiting'").fetchone()[0]
            return waiting

        return await self._run(run)

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'dead' ORDER BY finished_at, seq LIMIT ?"
            return [_job(row) for row in conn.execute(sql, (limit,))]

        return await self._run(run)

    async def pending_count(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            sql = "SELECT COUNT(*) FROM jobs WHERE status IN ('ready', 'waiting')"
            pending: int = conn.execute(sql).fetchone()[0]
            return pending

        return await self._run(run)

    async def _drop_jobs(self, predicate: Callable[[Job], bool]) -> int:
        def select(conn: sqlite3.Connection) -> list[Job]:
            sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('ready', 'waiting', 'dead')"
            return [_job(row) for row in conn.execute(sql)]

        def delete(conn: sqlite3.Connection, ids: list[str]) -> int:
            before = conn.total_changes
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            return conn.total_changes - before

        doomed = [job.id for job in await self._run(select) if predicate(job)]
        return await self._run(delete, doomed) if doomed else 0
