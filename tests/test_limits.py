"""A 10 MB message costs a real proxy process almost nothing and another tenant's recall nothing.

Runs :mod:`limits_probe` (the emulator and ``python -m proxy serve`` as their own processes; RSS from
``/proc/PID/status``): before these bounds, the same 10 MB message took the proxy from 587 MB to a
1,860 MB peak and held one of tenant B's recalls for 7.9 s behind the embedding thread (README, Limits).
"""

from __future__ import annotations

import statistics
import sys

import pytest

from proxy.hooks.recall import Off

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")


def test_a_huge_message_costs_bounded_memory_and_does_not_slow_another_tenant(memory_model_dir) -> None:
    from limits_probe import describe, measure

    report = measure(sizes_mb=(10.0, 3.5), baseline=20)
    print(describe(report))
    over, under = report.rounds
    assert over.status == 200 and over.memory.split() == ["off", "body-too-large"]
    assert Off(reason="body-too-large").headers()["x-memory-reason"] == "body-too-large"
    assert under.status == 200 and under.memory.split()[0] in ("ok", "none")  # parsed, recalled on its capped end
    for round_ in report.rounds:
        assert round_.extra_mb < 100, describe(report)
        assert round_.during_ms and set(round_.during_statuses) == {"found"}
        # tenant B's recall stays far inside its 150 ms deadline (before: seconds behind A's tokenizing)
        assert statistics.median(round_.during_ms) < 100, describe(report)
