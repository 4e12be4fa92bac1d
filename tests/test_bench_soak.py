"""``memproxy bench soak`` on a tiny run: real child processes, faults and abandoned clients, nothing lost."""

from __future__ import annotations

import random

from typer.testing import CliRunner

from proxy.bench import soak
from proxy.cli.commands import app


def test_the_plan_is_seeded_and_mixes_every_kind() -> None:
    rng_a, rng_b = random.Random(7), random.Random(7)
    a = [soak.plan(i, rng_a, "r", 0.5, 0.3, 0.1) for i in range(400)]
    b = [soak.plan(i, rng_b, "r", 0.5, 0.3, 0.1) for i in range(400)]
    assert [(p.route, p.stream, p.user, p.fault, p.status, p.abandon) for p in a] == [
        (p.route, p.stream, p.user, p.fault, p.status, p.abandon) for p in b
    ]
    assert {p.fault for p in a} == {None, "5xx", "cut", "slow"} and {p.abandon for p in a} == {None, "before", "mid"}
    assert all(p.abandon != "mid" or p.stream for p in a), "only a stream is left mid-way"
    assert {p.header() for p in a if p.fault == "cut"} == {"drop_after=3"}
    assert all(p.header() is None for p in a if not (p.fault or p.abandon))


def test_a_tiny_soak_prints_its_table_and_loses_nothing(monkeypatch, memory_model_dir) -> None:
    results: list[soak.Result] = []
    real = soak.run
    monkeypatch.setattr(soak, "run", lambda **options: results.append(real(**options)) or results[-1])
    options = ["--seconds", "3", "-c", "4", "--fault-rate", "0.3", "--abandon-rate", "0.1"]
    done = CliRunner().invoke(app, ["bench", "soak", *options, "--model-path", str(memory_model_dir)])
    assert done.exit_code == 0, done.output
    [result] = results
    for row in ("requests", "upstream 5xx", "upstream cut", "abandoned", "lost turns", "proxy RSS", "open fds"):
        assert row in done.output
    outcomes = result.outcomes
    assert outcomes["ok"] and outcomes["upstream 5xx"] and outcomes["upstream cut"] and outcomes["abandoned"]
    assert result.unexpected == 0, outcomes
    assert result.turns_sent and result.lost == 0 and result.unearned == 0 and result.duplicated == 0
    assert result.drained and result.dead_letters == 0
    start, peak, end = result.rss
    assert 0 < start <= peak and end <= peak and all(opened for opened, _ in result.fds)


def test_shares_outside_zero_to_one_are_refused_before_anything_starts() -> None:
    refused = CliRunner().invoke(app, ["bench", "soak", "--fault-rate", "1.5"])
    assert refused.exit_code == 2 and "--fault-rate" in refused.output
