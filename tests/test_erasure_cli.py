"""The operator's commands: migrate a thread, export the user, forget them, verify the audit chain."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest
from typer.testing import CliRunner

from proxy.cli import app

KEY = "sk-cli-app"
USER = "carol@example.com"


@pytest.fixture
def env(tmp_path, emulator, memory_model_dir, monkeypatch):
    for name, value in {
        "MEMPROXY_DATA_DIR": str(tmp_path),
        "MEMPROXY_UPSTREAM_URL": emulator.base_url,
        "MEMPROXY_EMBED_MODEL_PATH": str(memory_model_dir),
        "MEMPROXY_EXTRACTOR": "verbatim",
        "MEMPROXY_ASSISTANTS": "passthrough",
        "MEMPROXY_ERASURE_BACKOFF": "0.01",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MEMPROXY_TENANT", raising=False)
    monkeypatch.delenv("MEMPROXY_LLM_API_KEY", raising=False)
    return tmp_path


def upstream_thread(emulator, text: str) -> str:
    """A thread created at the upstream directly, with one user message: the proxy never saw it."""
    body = {"messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{emulator.base_url}/threads", headers={"authorization": f"Bearer {KEY}"}, json=body).json()[
        "id"
    ]


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_migrate_export_forget_and_verify_from_the_command_line(env, emulator) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    thread = httpx.post(
        f"{emulator.base_url}/threads",
        headers=headers,
        json={
            "messages": [
                {"role": "user", "content": "I run a bakery in Porto"},
                {"role": "assistant", "content": "Nice!"},
                {"role": "user", "content": "My daughter plays the violin"},
            ]
        },
    ).json()["id"]
    threads_file = env / "threads.txt"
    threads_file.write_text(f"# to migrate\n{thread}\n")

    migrated = run("migrate", "--user", USER, "--threads-file", str(threads_file), "--api-key", KEY)
    assert migrated.exit_code == 0, migrated.output
    assert thread in migrated.output and "done" in migrated.output

    exported = run("export", "--user", USER, "--api-key", KEY)
    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.stdout)
    assert sorted(m["text"] for m in data["memories"]) == ["I run a bakery in Porto", "My daughter plays the violin"]
    assert data["upstream"]["threads"] == [thread]

    forgot = run("forget", "--user", USER, "--api-key", KEY)
    assert forgot.exit_code == 0, forgot.output
    assert "outcome ok" in forgot.output and "upstream_threads" in forgot.output
    assert httpx.get(f"{emulator.base_url}/threads/{thread}", headers=headers).status_code == 404
    assert json.loads(run("export", "--user", USER, "--api-key", KEY).stdout)["memories"] == []

    verified = run("audit", "verify", "--api-key", KEY)
    assert verified.exit_code == 0 and "OK, 3 entries" in verified.output  # export, erase, export

    with sqlite3.connect(env / "state.sqlite3") as db:  # someone edits the erasure's counts
        body, entry_id = db.execute(
            "SELECT body, id FROM records WHERE collection = 'audit' AND body LIKE '%erase%'"
        ).fetchone()
        entry = json.loads(body)
        entry["counts"]["memories"] = 0
        db.execute("UPDATE records SET body = ? WHERE collection = 'audit' AND id = ?", (json.dumps(entry), entry_id))
    broken = run("audit", "verify", "--api-key", KEY)
    assert broken.exit_code == 1 and f"BROKEN at entry {entry_id}" in broken.output


def test_forget_reports_a_failed_upstream_delete_and_exits_1(env, emulator) -> None:
    thread = upstream_thread(emulator, "I live in Oslo")
    assert run("migrate", "-u", USER, "-t", thread, "--api-key", KEY).exit_code == 0
    emulator.fault(method="DELETE", path="/v1/threads", status=503, times=0)
    forgot = run("forget", "--user", USER, "--api-key", KEY)
    assert forgot.exit_code == 1
    assert "outcome partial" in forgot.output and f"thread {thread}: upstream answered 503" in forgot.output


def test_commands_need_a_tenant(env) -> None:
    result = run("audit", "verify")
    assert result.exit_code == 2 and "--tenant" in result.output


def test_forget_through_another_upstream_or_mode_reports_partial_and_keeps_the_record(env, emulator, monkeypatch):
    """Threads recorded through passthrough to one upstream are not 'gone' for a bridge elsewhere."""
    headers = {"authorization": f"Bearer {KEY}"}
    thread = upstream_thread(emulator, "I live in Oslo")
    assert run("migrate", "-u", USER, "-t", thread, "--api-key", KEY).exit_code == 0
    monkeypatch.setenv("MEMPROXY_ASSISTANTS", "bridge")  # the operator forgot the serve's configuration

    forgot = run("forget", "--user", USER, "--api-key", KEY)

    assert forgot.exit_code == 1 and "outcome partial" in forgot.output and thread in forgot.output
    assert httpx.get(f"{emulator.base_url}/threads/{thread}", headers=headers).status_code == 200
    monkeypatch.setenv("MEMPROXY_ASSISTANTS", "passthrough")  # where it was seen: now it goes
    again = run("forget", "--user", USER, "--api-key", KEY)
    assert again.exit_code == 0 and "outcome ok" in again.output
    assert httpx.get(f"{emulator.base_url}/threads/{thread}", headers=headers).status_code == 404


def test_the_commands_go_through_the_proxy_serving_the_data_directory(env, emulator, memory_model_dir) -> None:
    """`memproxy serve` holds the embedded store; forget / export / migrate / audit act through it."""
    from conftest import _free_port

    from proxy.bench.harness import child_server
    from proxy.cli.discovery import serving

    headers = {"authorization": f"Bearer {KEY}"}
    thread = upstream_thread(emulator, "I grow tomatoes on my balcony")
    port = _free_port()
    with child_server(["serve", "--port", str(port)], port):
        wait = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{port}/readyz/memory").status_code != 200 and time.monotonic() < wait:
            time.sleep(0.1)
        assert (env / "serve.json").exists()

        migrated = run("migrate", "-u", USER, "-t", thread, "--api-key", KEY)
        assert migrated.exit_code == 0, migrated.output
        exported = json.loads(run("export", "-u", USER, "--api-key", KEY).stdout)
        assert any("tomatoes" in m["text"] for m in exported["memories"])
        forgot = run("forget", "-u", USER, "--api-key", KEY)
        assert forgot.exit_code == 0 and "outcome ok" in forgot.output, forgot.output
        assert httpx.get(f"{emulator.base_url}/threads/{thread}", headers=headers).status_code == 404
        verified = run("audit", "verify", "--api-key", KEY)
        assert verified.exit_code == 0 and "chain intact" in verified.output
        head = run("audit", "head", "--api-key", KEY)
        assert head.exit_code == 0 and ":" in head.output.split("audit head of ", 1)[1]
    assert serving(env) is None  # gone with its process


def test_a_locked_store_is_one_clear_line(env) -> None:
    """Without an announcement (a proxy started otherwise), the lock is explained, not a traceback."""
    from proxy.memory.sealing import Sealer
    from proxy.memory.store_edge import EdgeStore  # holds the embedded store as a serving proxy would

    store = EdgeStore(
        env / "qdrant" / "memproxy_memories", dim=384, sealer=Sealer.ephemeral(), collection="memproxy_memories"
    )
    import asyncio

    asyncio.run(store.start())
    try:
        result = CliRunner().invoke(app, ["export", "-u", USER, "--api-key", KEY])
    finally:
        asyncio.run(store.close())
    assert result.exit_code == 2 and "in use by a running proxy" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
