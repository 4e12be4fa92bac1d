"""The audit log: a keyed hash chain appended atomically on every replica, held against a head kept apart.

Every test runs on SQLite and on a real redis-server (``state_factory``), with two State instances on
one store where replicas matter. Tampering is done the way someone with access to the store would:
records and the head edited, deleted, rewritten or rolled back directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest

from proxy import audit
from proxy.owner import Owner
from proxy.state import CHAIN_HEAD_NS, ChainHead

SECRET = b"audit-test-secret"
TENANT = "t_audit"
HEAD_KEY = f"{TENANT}:{audit.COLLECTION}"


def owner(n: int) -> Owner:
    return Owner.of(SECRET, TENANT, f"user-{n}@example.com")


async def append(state, n: int = 0, action: str = "export") -> dict:
    return await audit.append(state, action, secret=SECRET, owner=owner(n), counts={"memories": n})


async def appended(state, count: int) -> list[dict]:
    return [await append(state, n) for n in range(count)]


async def verdict(state, head: ChainHead | None = None, secret: bytes = SECRET) -> audit.Verdict:
    return await audit.verify(state, TENANT, secret=secret, head=head)


async def log(state) -> list[dict]:
    return [entry async for entry in audit._every_entry(state, TENANT)]


def legacy_entry(previous: str, n: int) -> dict:
    """An entry as wave 1 wrote it: no seq, plain SHA-256 of the canonical JSON."""
    entry = {
        "id": "audit_" + uuid.uuid4().hex,
        "at": "2025-01-01T00:00:00+00:00",
        "action": "erase",
        "tenant": TENANT,
        "subject": owner(n).hash,
        "counts": {"memories": n},
        "outcome": "ok",
        "prev": previous,
    }
    body = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return {**entry, "hash": hashlib.sha256(body).hexdigest()}


async def write_legacy(state, count: int) -> list[dict]:
    previous, written = audit.GENESIS, []
    for n in range(count):
        entry = legacy_entry(previous, n)
        await state.put_record(TENANT, audit.COLLECTION, entry["id"], entry)
        previous = entry["hash"]
        written.append(entry)
    return written


# --- concurrency: one chain, whatever the number of replicas --------------------------------------


async def test_concurrent_appends_on_two_replicas_make_one_chain(state_factory) -> None:
    first, second = await state_factory(), await state_factory()
    written = await asyncio.gather(*(append(first if n % 2 else second, n) for n in range(50)))

    entries = await log(first)
    assert [entry["seq"] for entry in entries] == list(range(1, 51))  # no gap, no duplicate, in log order
    assert sorted(entry["seq"] for entry in written) == list(range(1, 51))
    assert len({entry["prev"] for entry in entries}) == 50  # no fork: no two entries share a parent
    result = await verdict(second)
    assert result.ok and result.checked == 50 and result.reason is None
    assert result.head == ChainHead(50, entries[-1]["hash"]) == await audit.head(first, TENANT)
    assert first.chain_appends[audit.COLLECTION] + second.chain_appends[audit.COLLECTION] == 50


async def test_entries_are_keyed_and_the_head_is_logged(state, caplog) -> None:
    with caplog.at_level("INFO", logger="memproxy.audit"):
        entry = await append(state, 7, "erase")
    assert entry["seq"] == 1 and entry["prev"] == audit.GENESIS and entry["subject"] == owner(7).hash
    assert entry["hash"] == audit._keyed_digest(audit.chain_key(SECRET), entry) != audit._legacy_digest(entry)
    assert await audit.head(state, TENANT) == ChainHead(1, entry["hash"])
    assert f"audit erase appended to {TENANT}: seq 1, hash {entry['hash'][:16]}" in caplog.text
    assert "user-7" not in caplog.text


# --- wave 1 logs: an unkeyed prefix, then the keyed chain --------------------------------------------


async def test_a_log_written_the_old_way_is_a_legacy_prefix_the_keyed_chain_continues(state) -> None:
    legacy = await write_legacy(state, 3)
    before = await verdict(state)
    assert before.ok and before.legacy == 3 and before.head is None and await audit.head(state, TENANT) is None

    first, second = await appended(state, 2)

    assert (first["seq"], first["prev"]) == (1, legacy[-1]["hash"])  # continues from the last legacy hash
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    after = await verdict(state)
    assert after.ok and after.checked == 5 and after.legacy == 3 and after.head == ChainHead(2, second["hash"])


async def test_an_edited_legacy_entry_is_still_detected(state) -> None:
    legacy = await write_legacy(state, 3)
    await appended(state, 1)
    await state.put_record(TENANT, audit.COLLECTION, legacy[1]["id"], {**legacy[1], "counts": {"memories": 0}})
    result = await verdict(state)
    assert not result.ok and result.broken_at == legacy[1]["id"] and "does not match" in result.reason


# --- tampering -------------------------------------------------------------------------------------


async def test_an_edited_entry_is_detected(state) -> None:
    entries = await appended(state, 4)
    await state.put_record(TENANT, audit.COLLECTION, entries[1]["id"], {**entries[1], "counts": {"memories": 99}})
    result = await verdict(state)
    assert not result.ok and result.broken_at == entries[1]["id"] and result.checked == 1
    assert "hash does not match its content" in result.reason


async def test_a_removed_middle_entry_is_detected(state) -> None:
    entries = await appended(state, 4)
    await state.delete_record(TENANT, audit.COLLECTION, entries[1]["id"])
    result = await verdict(state)
    assert not result.ok and result.broken_at == entries[2]["id"] and "does not link" in result.reason


async def test_deleting_the_newest_entries_is_detected(state) -> None:
    entries = await appended(state, 5)
    for entry in entries[3:]:
        await state.delete_record(TENANT, audit.COLLECTION, entry["id"])
    result = await verdict(state)
    assert not result.ok and result.broken_at is None and result.checked == 3
    assert result.reason.startswith("the log ends at seq 3 but the stored head says seq 5")


async def test_deleting_the_whole_log_is_detected(state) -> None:
    for entry in await appended(state, 3):
        await state.delete_record(TENANT, audit.COLLECTION, entry["id"])
    result = await verdict(state)
    assert not result.ok and result.checked == 0 and "ends at seq 0 but the stored head says seq 3" in result.reason


async def test_deleting_the_stored_head_is_detected(state) -> None:
    await appended(state, 2)
    assert await state.delete(CHAIN_HEAD_NS, HEAD_KEY)
    result = await verdict(state)
    assert not result.ok and "no stored head: the head was deleted" in result.reason


async def test_a_log_rewritten_with_recomputed_plain_hashes_is_detected(state) -> None:
    """Without the secret, a forger can only recompute unkeyed hashes: as wave 1 entries or with seq kept."""
    entries = await appended(state, 3)
    for entry in entries:
        await state.delete_record(TENANT, audit.COLLECTION, entry["id"])
    await write_legacy(state, 2)  # a plausible wave 1 log in its place
    result = await verdict(state)
    assert not result.ok and "ends at seq 0 but the stored head says seq 3" in result.reason

    previous = audit.GENESIS
    for entry in entries:  # or the same entries, edited, with seq and SHA-256 links recomputed
        forged = {**entry, "counts": {"memories": 0}, "prev": previous}
        forged["hash"] = audit._legacy_digest(forged)
        await state.put_record(TENANT, audit.COLLECTION, forged["id"], forged)
        previous = forged["hash"]
    await state.set(CHAIN_HEAD_NS, HEAD_KEY, ChainHead(3, previous).as_json())  # head rewritten to match
    result = await verdict(state)
    assert not result.ok and "hash does not match" in result.reason


async def test_a_rollback_of_log_and_head_needs_the_head_kept_outside(state) -> None:
    entries = await appended(state, 5)
    kept = audit.parse_head(str(await audit.head(state, TENANT)))
    for entry in entries[3:]:  # back to seq 3, head included: consistent in the store
        await state.delete_record(TENANT, audit.COLLECTION, entry["id"])
    await state.set(CHAIN_HEAD_NS, HEAD_KEY, ChainHead.of(entries[2]).as_json())
    assert (await verdict(state)).ok

    result = await verdict(state, head=kept)
    assert not result.ok and "the log ends at seq 3 but the head kept outside says seq 5" in result.reason

    await appended(state, 3)  # the rolled-back chain grows past seq 5 again: seq 5 is another entry now
    result = await verdict(state, head=kept)
    assert not result.ok and "entry seq 5 has hash" in result.reason and "kept outside" in result.reason
    assert (await verdict(state, head=ChainHead(3, entries[2]["hash"][:16]))).ok  # a prefix from the log line


async def test_another_secret_verifies_nothing(state) -> None:
    entries = await appended(state, 2)
    result = await verdict(state, secret=b"another secret")
    assert not result.ok and result.broken_at == entries[0]["id"]


def test_heads_kept_outside_are_parsed_strictly() -> None:
    assert audit.parse_head(" 12:" + "AB" * 32 + "\n") == ChainHead(12, "ab" * 32)
    for bad in ("12", "0:" + "a" * 64, "3:abc", "x:" + "a" * 64, "3:" + "g" * 64):
        with pytest.raises(audit.BadHead):
            audit.parse_head(bad)


# --- the command line: audit head, audit verify --head ------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """The embedded default under tmp_path (SQLite, the generated secret), as an operator's shell has it."""
    monkeypatch.setenv("MEMPROXY_DATA_DIR", str(tmp_path))
    for name in ("MEMPROXY_REDIS_URL", "MEMPROXY_TENANT", "MEMPROXY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def cli(*args: str):
    from typer.testing import CliRunner

    from proxy.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_with_the_servers_secret(data_dir, count: int) -> list[dict]:
    from proxy.config import Settings
    from proxy.identity import load_secret
    from proxy.state.sqlite import SqliteState

    secret = load_secret(Settings())

    async def write() -> list[dict]:
        async with await SqliteState.open(data_dir / "state.sqlite3") as state:
            return [await audit.append(state, "erase", secret=secret, tenant=TENANT) for _ in range(count)]

    return asyncio.run(write())


def test_audit_head_and_verify_with_a_head_kept_outside_from_the_command_line(cli_env) -> None:
    import sqlite3

    assert "audit head of t_audit: none" in cli("audit", "head", "--tenant", TENANT).output
    entries = write_with_the_servers_secret(cli_env, 5)

    printed = cli("audit", "head", "--tenant", TENANT)
    assert printed.exit_code == 0 and printed.output.strip() == f"audit head of {TENANT}: 5:{entries[-1]['hash']}"
    kept = printed.output.split()[-1]  # what the operator pastes into a ticket
    verified = cli("audit", "verify", "--tenant", TENANT, "--head", kept)
    assert verified.exit_code == 0, verified.output
    assert (
        "OK, 5 entries, chain intact, head 5:" in verified.output and "reaches the head kept outside" in verified.output
    )

    with sqlite3.connect(cli_env / "state.sqlite3") as db:  # log and head rolled back to seq 3, consistently
        db.execute(
            "DELETE FROM records WHERE collection = 'audit' AND id IN (?, ?)", (entries[3]["id"], entries[4]["id"])
        )
        db.execute("UPDATE kv_keys SET value = ? WHERE ns = ?", (ChainHead.of(entries[2]).encode(), CHAIN_HEAD_NS))
    assert cli("audit", "verify", "--tenant", TENANT).exit_code == 0  # the store alone cannot tell
    rolled_back = cli("audit", "verify", "--tenant", TENANT, "--head", kept)
    assert rolled_back.exit_code == 1
    assert "BROKEN: the log ends at seq 3 but the head kept outside says seq 5" in rolled_back.output

    with sqlite3.connect(cli_env / "state.sqlite3") as db:  # the newest entry deleted, the head left alone
        db.execute("DELETE FROM records WHERE collection = 'audit' AND id = ?", (entries[2]["id"],))
    cut = cli("audit", "verify", "--tenant", TENANT)
    assert cut.exit_code == 1 and "BROKEN: the log ends at seq 2 but the stored head says seq 3" in cut.output

    malformed = cli("audit", "verify", "--tenant", TENANT, "--head", "5")
    assert malformed.exit_code == 2 and "SEQ:HASH" in malformed.output
