"""``memproxy bench overhead``: its load generators send what the plan says, and a short run prints its table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send
from typer.testing import CliRunner

from proxy.bench import overhead
from proxy.bench.load import Plan, run_python, run_wrk, wrk_path
from proxy.cli.commands import app
from proxy.server import ServerThread


class Recorder:
    """A bare ASGI server app that keeps every request body and answers 200 (or a stream when asked)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        stream = b'"stream": true' in body
        content_type = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        if stream:
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        else:
            await send({"type": "http.response.body", "body": b"{}"})


QUESTIONS = Plan(
    "/v1/responses",
    {"content-type": "application/json"},
    template='{"input": "%s (%d)", "safety_identifier": "%s"}',
    asks=['What did I say about "tea"?', "Where do I live?"],
    users=["user-1", "user-2", "user-3"],
)

RUNNERS = [
    pytest.param(run_python, id="python"),
    pytest.param(run_wrk, id="wrk", marks=pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed")),
]


@pytest.mark.parametrize("run", RUNNERS)
def test_every_call_asks_a_question_never_asked_before(run) -> None:
    recorder = Recorder()
    with ServerThread(recorder, settings=None, lifespan="off") as server:
        result = run(server.url, QUESTIONS, 4, 1.0)
    assert result.requests > 10 and result.errors == 0
    bodies = [json.loads(body) for body in recorder.bodies]  # every body is valid JSON, quotes escaped
    assert len({body["input"] for body in bodies}) == len(bodies) >= result.requests
    assert {body["input"].rsplit(" (", 1)[0] for body in bodies} == set(QUESTIONS.asks)
    assert {body["safety_identifier"] for body in bodies} == set(QUESTIONS.users)
    assert 0 < result.p50 <= result.p95 <= result.p99


def test_the_python_generator_times_a_streams_first_event_and_uses_each_path_once() -> None:
    recorder = Recorder()
    paths = [f"/v1/threads/thread_{index}/runs" for index in range(30)]
    plan = Plan("", {}, body=b'{"stream": true}', paths=paths, stream=True)
    with ServerThread(recorder, settings=None, lifespan="off") as server:
        result = run_python(server.url, plan, 4, 30.0)
    assert result.requests == len(recorder.bodies) == 30, "it stops once the paths are used up"
    assert result.first_event_p50 is not None and 0 < result.first_event_p50 <= result.p50


def test_a_short_run_prints_the_emulator_memproxy_and_another_checkout_side_by_side(monkeypatch) -> None:
    tables: list[tuple[str, list[list[str]]]] = []
    monkeypatch.setattr(overhead, "print_table", lambda title, columns, rows: tables.append((title, rows)))
    checkout = Path(__file__).resolve().parents[1]  # this one, standing in for an older commit's worktree
    options = ["--seconds", "0.5", "-c", "4", "--memories", "0", "--load", "python", "--compare", str(checkout)]
    done = CliRunner().invoke(app, ["bench", "overhead", *options])
    assert done.exit_code == 0, done.output
    [(title, rows)] = tables
    assert "Python generator" in title
    cells = {(row[0], row[1], row[2]): dict(zip(overhead.COLUMNS, row, strict=True)) for row in rows}
    for scenario in ("chat", "chat stream"):
        for conc in ("1", "4"):
            direct, proxied = cells[scenario, conc, "direct"], cells[scenario, conc, "memproxy"]
            assert direct["errors"] == proxied["errors"] == "0"
            assert float(proxied["rps"]) > 0 and float(proxied["CPU/req"]) > 0
            assert float(proxied["added p50"]) == pytest.approx(float(proxied["p50"]) - float(direct["p50"]), abs=0.02)
            has_first_event = proxied["TTFE p50"] != "-"
            assert has_first_event == (scenario == "chat stream")
            [other] = [
                cell
                for (s, c, name), cell in cells.items()
                if (s, c) == (scenario, conc) and name.startswith("memproxy@")
            ]
            assert other["errors"] == "0" and float(other["rps"]) > 0 and float(other["CPU/req"]) > 0


def test_unknown_comparisons_and_generators_are_refused() -> None:
    for option in (["--compare", "nginx"], ["--compare", "/tmp"], ["--load", "ab"]):
        refused = CliRunner().invoke(app, ["bench", "overhead", *option])
        assert refused.exit_code == 2, refused.output


LITELLM = os.environ.get("MEMPROXY_BENCH_LITELLM") or shutil.which("litellm")


@pytest.mark.skipif(LITELLM is None, reason="litellm is not installed (set MEMPROXY_BENCH_LITELLM to its command)")
def test_compare_litellm_adds_its_rows_on_the_same_emulator(monkeypatch) -> None:
    tables: list[list[list[str]]] = []
    monkeypatch.setattr(overhead, "print_table", lambda title, columns, rows: tables.append(rows))
    options = ["--seconds", "1", "-c", "4", "--memories", "0", "--compare", "litellm", "--litellm-bin", str(LITELLM)]
    done = CliRunner().invoke(app, ["bench", "overhead", *options])
    assert done.exit_code == 0, done.output
    rows = [dict(zip(overhead.COLUMNS, row, strict=True)) for row in tables[0]]
    litellm = [row for row in rows if row["server"] == "litellm"]
    assert len(litellm) == 4 and all(row["errors"] == "0" and float(row["rps"]) > 0 for row in litellm)
