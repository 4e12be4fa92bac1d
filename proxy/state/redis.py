"""Redis backend: state shared by several proxy replicas (``MEMPROXY_REDIS_URL``).

Key/value entries are native Redis strings, lists and sets with native TTLs. Records are a hash per
(tenant, collection) plus a sorted set holding each id's creation sequence number.

The job queue is a stream with one consumer group: XADD to enqueue, XREADGROUP to claim, XACK + XDEL
once done, and XAUTOCLAIM with ``min-idle = lease`` to take over jobs whose worker died. Streams
carry only job ids; each job's mutable state (attempts, last error) sits in a hash, so a retry is
"ack this entry, park the id in a sorted set scored by its due time", moved back onto the stream
when due. A job waiting for its tenant's key leaves the stream for a hash (job id -> tenant) until
a release moves it back. Conditional steps (lease still held? idempotency key free?) run as small Lua
scripts so two replicas never interleave inside one. All keys start with ``prefix:`` so tests and several
deployments can share one Redis.

Leases are measured by Redis (entry idle time), so all consumers should pass the same
``lease_seconds``; backoff due times use the injected clock.

A chained append (:meth:`State.append_chained`) is an optimistic loop: read the head, build the
record in Python (its hash is an HMAC under the server's secret, which Lua cannot compute and which
never goes to Redis), then one Lua script writes the record and the new head only if the head is
still the one read; otherwise it answers the head that won, and the record is built again on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from redis import ResponseError
from redis.asyncio import Redis

from proxy.state.base import (
    CHAIN_ATTEMPTS,
    CHAIN_HEAD_NS,
    ChainConflict,
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
)

GROUP = "workers"
PROMOTE_BATCH = 100
CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection: an unreachable Redis fails a call, it does not hang it."""

ENQUEUE = """
if ARGV[2] == '1' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return redis.call('GET', KEYS[1]) end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
return ARGV[1]
"""

START = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return false
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'visible_at', ARGV[4], 'consumer', ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'job', id)
end
return #ids
"""

# KEYS: job hash, stream, target (delayed set / dead stream), idempotency key.
# ARGV: attempts, group, entry, mode ('ack' | 'retry' | 'dead'), then mode arguments.
SETTLE = """
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
if ARGV[4] == 'retry' then
  redis.call('HSET', KEYS[1], 'visible_at', ARGV[5], 'last_error', ARGV[6])
  redis.call('HDEL', KEYS[1], 'consumer')
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
  return 1
end
redis.call('DEL', KEYS[1])
if ARGV[4] == 'dead' then
  redis.call('XADD', KEYS[3], '*', 'job', ARGV[5])
  redis.call('DEL', KEYS[4])
else
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1
"""

# KEYS: job hash, stream, waiting hash. ARGV: attempts, group, entry, now, job id, tenant.
# The delivery is counted back: released and claimed again, the job is on the same attempt.
PARK = """
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'visible_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'consumer')
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
return 1
"""

# KEYS: waiting hash, stream. ARGV: '1' to release every tenant's jobs, else '0' and the tenant.
RELEASE = """
local flat = redis.call('HGETALL', KEYS[1])
local released = 0
for i = 1, #flat, 2 do
  if ARGV[1] == '1' or flat[i + 1] == ARGV[2] then
    redis.call('HDEL', KEYS[1], flat[i])
    redis.call('XADD', KEYS[2], '*', 'job', flat[i])
    released = released + 1
  end
end
return released
"""

# KEYS: chain head, record bodies, record order, record sequence counter.
# ARGV: the head the record was built on ('' for none), record id, record body, new head.
# Returns {1, new head} when written, {0, current head} when another append got there first.
APPEND_CHAINED = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {0, current} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], 'NX', redis.call('INCR', KEYS[4]), ARGV[2])
redis.call('SET', KEYS[1], ARGV[4])
return {1, ARGV[4]}
"""

# The client decodes replies (``decode_responses=True``, see :meth:`RedisState.connect`) and speaks
# RESP2. redis-py types replies as ``bytes | str`` (it cannot see the decode flag) and stream replies
# as a union over both protocols, so the replies used here are cast to what they are: strings, and
# stream entries as ``(entry id, {field: value})`` pairs.
_Entries = list[tuple[str, dict[str, str]]]
"""Stream entries as XRANGE and XREADGROUP return them from the decoding client."""

JOB_FIELDS = ("kind", "payload", "idempotency_key", "tenant", "subject_hash", "visible_at", "last_error", "created_at")


def _part(text: str) -> str:
    """Escape a key component so ``a:b`` + ``c`` never collides with ``a`` + ``b:c``."""
    return text.replace("%", "%25").replace(":", "%3A")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _job_fields(job: Job) -> list[str]:
    """Flat field/value list for HSET; None fields are left out."""
    values = {**{name: getattr(job, name) for name in JOB_FIELDS}, "payload": encode(job.payload)}
    flat = ["attempts", str(job.attempts)]
    for name, value in values.items():
        if value is not None:
            flat += [name, str(value)]
    return flat


def _job_from_hash(job_id: str, h: dict[str, str], receipt: str) -> Job:
    return Job(
        id=job_id,
        kind=h["kind"],
        payload=decode(h["payload"]),
        attempts=int(h.get("attempts", 0)),
        idempotency_key=h.get("idempotency_key"),
        tenant=h.get("tenant"),
        subject_hash=h.get("subject_hash"),
        visible_at=float(h["visible_at"]),
        last_error=h.get("last_error"),
        created_at=float(h["created_at"]),
        receipt=receipt,
    )


class RedisState(State):
    """State in Redis; see the module docstring for the key layout and the queue."""

    def __init__(
        self, client: Redis, *, prefix: str = "memproxy", clock: Clock | None = None, policy: JobPolicy | None = None
    ) -> None:
        super().__init__(clock=clock, policy=policy)
        self.redis = client
        self.prefix = prefix
        self._stream = self._key("jobs")
        self._delayed = self._key("jobs", "delayed")
        self._dead = self._key("jobs", "dead")
        self._waiting = self._key("jobs", "waiting")
        self._enqueue_script = client.register_script(ENQUEUE)
        self._start_script = client.register_script(START)
        self._promote_script = client.register_script(PROMOTE)
        self._settle_script = client.register_script(SETTLE)
        self._append_chained_script = client.register_script(APPEND_CHAINED)
        self._park_script = client.register_script(PARK)
        self._release_script = client.register_script(RELEASE)

    @classmethod
    async def connect(
        cls, url: str, *, prefix: str = "memproxy", clock: Clock | None = None, policy: JobPolicy | None = None
    ) -> RedisState:
        """Connect and make sure the job stream and its consumer group exist."""
        client = Redis.from_url(url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT)
        state = cls(client, prefix=prefix, clock=clock, policy=policy)
        try:
            await state._ensure_group()
        except BaseException:
            await state.close()
            raise
        return state

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        await self.redis.ping()

    def _key(self, *parts: str) -> str:
        return ":".join([self.prefix, *map(_part, parts)])

    def _job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    def _idem_key(self, job: Job) -> str:
        """The job's idempotency key, or (no key) its own hash, which settling deletes anyway."""
        if job.idempotency_key is None:
            return self._job_key(job.id)
        return self._key("idem", job.idempotency_key)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- key/value -----------------------------------------------------------------------------

    async def _get(self, ns: str, key: str) -> str | None:
        return cast("str | None", await self.redis.get(self._key("kv", ns, key)))

    async def _set(self, ns: str, key: str, raw: str, ttl: float | None) -> None:
        await self.redis.set(self._key("kv", ns, key), raw, px=_ms(ttl) if ttl is not None else None)

    async def _set_new(self, ns: str, key: str, raw: str) -> bool:
        return bool(await self.redis.set(self._key("kv", ns, key), raw, nx=True))

    async def delete(self, ns: str, key: str) -> bool:
        return bool(await self.redis.delete(self._key("kv", ns, key)))

    async def expire(self, ns: str, key: str, ttl: float | None) -> bool:
        name = self._key("kv", ns, key)
        if ttl is not None:
            return bool(await self.redis.pexpire(name, _ms(ttl)))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(name)
            pipe.persist(name)
            exists, _ = await pipe.execute()
        return bool(exists)

    async def _list_push(self, ns: str, key: str, raws: list[str], max_len: int | None, ttl: float | None) -> int:
        name = self._key("kv", ns, key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(name, *raws)
            if max_len is not None:
                pipe.ltrim(name, -max_len, -1)
            if ttl is not None:
                pipe.pexpire(name, _ms(ttl))
            pipe.llen(name)
            results = await pipe.execute()
        return int(results[-1])

    async def _list_range(self, ns: str, key: str, start: int, stop: int) -> list[str]:
        return cast("list[str]", await self.redis.lrange(self._key("kv", ns, key), start, stop))

    async def _set_add(self, ns: str, key: str, members: list[str], ttl: float | None) -> int:
        name = self._key("kv", ns, key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(name, *members)
            if ttl is not None:
                pipe.pexpire(name, _ms(ttl))
            results = await pipe.execute()
        return int(results[0])

    async def _set_remove(self, ns: str, key: str, members: list[str]) -> int:
        return int(await self.redis.srem(self._key("kv", ns, key), *members))

    async def set_members(self, ns: str, key: str) -> set[str]:
        return set(cast("set[str]", await self.redis.smembers(self._key("kv", ns, key))))

    async def set_contains(self, ns: str, key: str, member: str) -> bool:
        return bool(await self.redis.sismember(self._key("kv", ns, key), member))

    # --- records -------------------------------------------------------------------------------

    def _record_keys(self, tenant: str, collection: str) -> tuple[str, str]:
        return self._key("rec", tenant, collection), self._key("rec", tenant, collection, "order")

    async def _put_record(self, tenant: str, collection: str, id: str, raw: str) -> None:
        bodies, order = self._record_keys(tenant, collection)
        seq = await self.redis.incr(self._key("rec", "seq"))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(bodies, id, raw)
            pipe.zadd(order, {id: seq}, nx=True)
            await pipe.execute()

    async def _get_record(self, tenant: str, collection: str, id: str) -> str | None:
        return cast("str | None", await self.redis.hget(self._record_keys(tenant, collection)[0], id))

    async def delete_record(self, tenant: str, collection: str, id: str) -> bool:
        bodies, order = self._record_keys(tenant, collection)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(bodies, id)
            pipe.zrem(order, id)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def _scan_records(
        self, tenant: str, collection: str, ascending: bool, cursor: str | None, limit: int
    ) -> list[str]:
        bodies, order = self._record_keys(tenant, collection)
        bound = "+inf" if not ascending else "-inf"
        if cursor is not None:
            score = await self.redis.zscore(order, cursor)
            if score is None:
                raise UnknownCursor(cursor)
            bound = f"({int(score)}"
        if ascending:
            ids = cast("list[str]", await self.redis.zrangebyscore(order, bound, "+inf", start=0, num=limit))
        else:
            ids = cast("list[str]", await self.redis.zrevrangebyscore(order, bound, "-inf", start=0, num=limit))
        if not ids:
            return []
        return [raw for raw in cast("list[str | None]", await self.redis.hmget(bodies, ids)) if raw is not None]

    async def _append_chained(self, tenant: str, collection: str, make: MakeLink) -> dict[str, Any]:
        head_key = self._key("kv", CHAIN_HEAD_NS, chain_head_key(tenant, collection))
        keys = [head_key, *self._record_keys(tenant, collection), self._key("rec", "seq")]
        current = cast("str | None", await self.redis.get(head_key)) or ""
        for _ in range(CHAIN_ATTEMPTS):
            if current:
                head: ChainHead | None = ChainHead.decode(current)
            else:
                head = implied_head(await self._scan_records(tenant, collection, False, None, 1))
            record = make(head)
            args = [current, record["id"], encode(record), ChainHead.of(record).encode()]
            written, current = cast("list[Any]", await self._append_chained_script(keys=keys, args=args))
            if written:
                return record
        raise ChainConflict(f"chained append to {collection} of {tenant}: lost {CHAIN_ATTEMPTS} races in a row")

    # --- jobs ----------------------------------------------------------------------------------

    async def _enqueue(self, job: Job) -> str:
        [job_id] = await self._enqueue_many([job])
        return job_id

    async def _enqueue_many(self, jobs: list[Job]) -> list[str]:
        """All of ``jobs`` in one pipeline (one round trip), each by the atomic enqueue script."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            keys = [self._idem_key(job), self._job_key(job.id), self._stream]
            use_idem = "1" if job.idempotency_key is not None else "0"
            await self._enqueue_script(keys=keys, args=[job.id, use_idem, *_job_fields(job)], client=pipe)
        # each the new id, or the one already holding the idempotency key
        return [str(job_id) for job_id in await pipe.execute()]

    async def _claim(self, consumer: str, count: int, lease: float) -> list[Job]:
        now = self.clock()
        entries = await self._reclaim_stuck(consumer, count, lease)
        if len(entries) < count:
            await self._promote_script(keys=[self._delayed, self._stream], args=[now, PROMOTE_BATCH])
            entries += await self._read_new(consumer, count - len(entries))
        started = await asyncio.gather(
            *(self._start(entry, job_id, consumer, now + lease) for entry, job_id in entries)
        )
        return [job for job in started if job is not None]

    async def _reclaim_stuck(self, consumer: str, count: int, lease: float) -> list[tuple[str, str]]:
        """Take over entries whose holder has been silent for a whole lease (a dead worker)."""
        found: list[tuple[str, str]] = []
        cursor = "0-0"
        claimed: list[tuple[str, dict[str, str] | None]]  # no fields: an entry deleted while pending (Redis < 7)
        while len(found) < count:
            cursor, claimed, _deleted = await self.redis.xautoclaim(
                self._stream, GROUP, consumer, _ms(lease), cursor, count=count - len(found)
            )
            found += [(entry, fields["job"]) for entry, fields in claimed if fields]
            if cursor == "0-0":
                break
        return found

    async def _read_new(self, consumer: str, count: int) -> list[tuple[str, str]]:
        try:
            reply = await self.redis.xreadgroup(GROUP, consumer, {self._stream: ">"}, count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group()  # the stream was deleted (FLUSHDB): start afresh
            return []
        streams = cast("list[tuple[str, _Entries]]", reply)
        return [(entry, fields["job"]) for _stream, messages in streams for entry, fields in messages]

    async def _start(self, entry: str, job_id: str, consumer: str, lease_until: float) -> Job | None:
        keys = [self._job_key(job_id), self._stream]
        flat: list[str] | None = await self._start_script(keys=keys, args=[GROUP, entry, consumer, lease_until])
        if not flat:
            return None
        return _job_from_hash(job_id, dict(zip(flat[::2], flat[1::2], strict=True)), entry)

    async def _settle(self, job: Job, target: str, mode: str, *extra: str | int) -> bool:
        keys = [self._job_key(job.id), self._stream, target, self._idem_key(job)]
        args = [job.attempts, GROUP, job.receipt or "0-0", mode, *extra]
        return bool(await self._settle_script(keys=keys, args=args))

    async def ack(self, job: Job) -> bool:
        return await self._settle(job, self._delayed, "ack", _ms(self.policy.idempotency_retention))

    async def _retry(self, job: Job, error: str, visible_at: float) -> bool:
        return await self._settle(job, self._delayed, "retry", repr(visible_at), error, job.id)

    async def _bury(self, job: Job, error: str) -> bool:
        dead = replace(job, last_error=error, receipt="")
        return await self._settle(job, self._dead, "dead", dead.to_json())

    async def _park(self, job: Job) -> bool:
        keys = [self._job_key(job.id), self._stream, self._waiting]
        args: list[str | int] = [
            job.attempts,
            GROUP,
            job.receipt or "0-0",
            repr(self.clock()),
            job.id,
            job.tenant or "",
        ]
        return bool(await self._park_script(keys=keys, args=args))

    async def _release(self, tenant: str | None) -> int:
        args = ["1", ""] if tenant is None else ["0", tenant]
        return int(await self._release_script(keys=[self._waiting, self._stream], args=args))

    async def waiting_count(self) -> int:
        return int(await self.redis.hlen(self._waiting))

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        entries = cast(_Entries, await self.redis.xrange(self._dead, count=limit))
        return [replace(Job.from_json(fields["job"]), receipt=entry) for entry, fields in entries]

    async def pending_count(self) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self._stream)
            pipe.zcard(self._delayed)
            pipe.hlen(self._waiting)
            streamed, delayed, waiting = await pipe.execute()
        return int(streamed) + int(delayed) + int(waiting)

    async def _drop_jobs(self, predicate: Callable[[Job], bool]) -> int:
        """Scan the stream, the retry set and the dead letters; rare (erasure), so a scan is fine."""
        located = [(fields["job"], entry) for entry, fields in cast(_Entries, await self.redis.xrange(self._stream))]
        located += [(job_id, "") for job_id in cast("list[str]", await self.redis.zrange(self._delayed, 0, -1))]
        located += [(job_id, "") for job_id in cast("list[str]", await self.redis.hkeys(self._waiting))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, _ in located:
                pipe.hgetall(self._job_key(job_id))
            hashes: list[dict[str, str]] = await pipe.execute()
        doomed: dict[str, Job] = {}
        for (job_id, entry), h in zip(located, hashes, strict=True):
            if h:
                job = _job_from_hash(job_id, h, entry)
                if predicate(job):
                    doomed[job_id] = job
        dead = [job for job in await self.dead_letters(limit=2**31) if predicate(job)]
        async with self.redis.pipeline(transaction=True) as pipe:
            for job in doomed.values():
                if job.receipt:
                    pipe.xack(self._stream, GROUP, job.receipt)
                    pipe.xdel(self._stream, job.receipt)
                pipe.zrem(self._delayed, job.id)
                pipe.hdel(self._waiting, job.id)
                pipe.delete(self._job_key(job.id))
                if job.idempotency_key is not None:
                    pipe.delete(self._idem_key(job))
            for job in dead:
                pipe.xdel(self._dead, job.receipt)
            await pipe.execute()
        return len(doomed) + len(dead)
