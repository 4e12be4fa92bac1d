"""``bench quality``: its data holds what the issue asks for, and it measures the proxy's own path."""

from __future__ import annotations

from typer.testing import CliRunner

from proxy.bench.membench import bench_settings
from proxy.bench.quality.data import facts, questions
from proxy.bench.quality.evaluate import Variant, evaluate, mean_injected, share_found
from proxy.bench.quality.report import report


def test_the_data_has_enough_facts_distractors_and_questions_of_every_kind():
    needed = [f for f in facts() if f.key]
    assert len(needed) >= 60 and len(facts()) - len(needed) >= 30 and len(questions()) >= 60
    assert {q.how for q in questions()} == {"paraphrase", "implied", "combined"}
    keys = {(f.user, f.key) for f in needed}
    assert all((q.user, key) in keys for q in questions() for key in q.needs)
    assert questions("dev") and questions("test") and len(questions("dev")) + len(questions("test")) == len(questions())
    assert len({f.user for f in facts()}) >= 5


async def test_a_floor_injects_less_and_the_report_says_so(local_embedder, tmp_path, capsys):
    variants = [
        Variant("floor", {"memory_min_similarity": 0.25, "memory_relative_similarity": 0.0}),
        Variant("top 3", {"memory_min_similarity": 0.0, "memory_relative_similarity": 0.0, "memory_top_k": 3}),
    ]
    results = await evaluate(local_embedder, bench_settings(tmp_path / "data"), tmp_path, variants)
    floor, top3 = results["floor"], results["top 3"]
    assert len(floor) == len(top3) == len(questions())
    assert mean_injected(top3) == 3.0  # every user has more than 3 memories
    assert mean_injected(floor) < 3.0 and share_found(floor) < share_found(top3)
    # the paraphrase of the issue: a fact under the old floor, found once the floor is off
    k8s = next(a for a in top3 if a.question.text == "Which orchestrator do we use?")
    assert "k8s" in k8s.injected
    report(results, "test settings")
    out = " ".join(capsys.readouterr().out.split())
    assert "intended facts injected" in out and "top 3" in out and "3.0" in out


def test_the_command_is_there():
    from proxy.cli import app

    result = CliRunner().invoke(app, ["bench", "quality", "--help"])
    assert result.exit_code == 0 and "--model-path" in result.output
