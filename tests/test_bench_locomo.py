"""``memproxy bench locomo`` on a tiny LoCoMo-format file: parsing, metrics, and the command's tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from proxy.bench.locomo.data import _memory, load_locomo, memories_of, parse_evidence
from proxy.bench.locomo.evaluate import (
    Evaluation,
    QuestionResult,
    evaluate,
    mean_recall,
    micro_recall,
    recall_at,
    rrf,
    truncate_transcript,
)
from proxy.bench.locomo.report import ranked_by, report
from proxy.bench.membench import bench_settings
from proxy.memory.render import CLOSE, HEADER, OPEN
from proxy.memory.tokens import count_tokens


def _turn(speaker: str, dia_id: str, text: str, **extra) -> dict:
    return {"speaker": speaker, "dia_id": dia_id, "text": text, **extra}


SESSION_1 = [
    _turn("Caroline", "D1:1", "Hey Mel! How have you been lately?"),
    _turn(
        "Caroline",
        "D1:2",
        "I adopted an axolotl last week, her name is Zephyrine!",
        blip_caption="a pink axolotl in an aquarium",
        img_url=["https://example.invalid/a.jpg"],
    ),
    _turn("Melanie", "D1:3", "That is so cute. The kids would love to see her."),
    _turn("Melanie", "D1:4", "I started pottery classes at the community centre on Tuesdays."),
]
SESSION_2 = [
    _turn("Melanie", "D2:1", "We went camping at the lake with the whole family."),
    _turn("Caroline", "D2:2", "Sounds lovely. I have been busy with my counselling course."),
    _turn("Melanie", "D2:3", "The kids roasted marshmallows every single night."),
    _turn("Caroline", "D2:4", "I hope you all had a wonderful time out there."),
]
QA = [
    {"question": "What is the name of Caroline's axolotl?", "answer": "Zephyrine", "evidence": ["D1:2"], "category": 4},
    {
        "question": "What did Melanie's family do at the lake?",
        "answer": "camping, marshmallows",
        "evidence": ["D2:1; D2:3"],
        "category": 1,
    },  # malformed: two ids in one string
    {"question": "Which classes did Melanie start?", "answer": "pottery", "evidence": ["D:1:4"], "category": 2},
    {"question": "Did Caroline adopt a dog?", "evidence": ["D1:2"], "category": 5, "adversarial_answer": "yes"},
    {"question": "What is Caroline's favourite film?", "answer": "?", "evidence": ["D9:99", "D"], "category": 3},
]


def _write_tiny(directory):
    sample = {
        "sample_id": "conv-tiny",
        "qa": QA,
        "conversation": {
            "speaker_a": "Caroline",
            "speaker_b": "Melanie",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": SESSION_1,
            "session_2_date_time": "10:37 am on 20 June, 2023",
            "session_2": SESSION_2,
            "session_3_date_time": "9:00 am on 1 July, 2023",  # a date without turns, as in the real file
        },
    }
    path = directory / "tiny-locomo.json"
    path.write_text(json.dumps([sample]))
    return path


@pytest.fixture
def tiny_locomo(tmp_path):
    return _write_tiny(tmp_path)


def test_malformed_evidence_strings_are_split_and_repaired():
    assert parse_evidence(["D8:6; D9:17"]) == (["D8:6", "D9:17"], [])
    assert parse_evidence(["D:11:26", "D1:3 D1:5", "D1:3"]) == (["D11:26", "D1:3", "D1:5"], [])
    assert parse_evidence(["D", "D1:2"]) == (["D1:2"], ["D"])


def test_loading_stores_dated_turns_and_keeps_only_answerable_questions(tiny_locomo):
    dataset = load_locomo(tiny_locomo)
    (conv,) = dataset.conversations
    assert [t.dia_id for t in conv.turns] == [t["dia_id"] for t in SESSION_1 + SESSION_2]
    axolotl = conv.turns[1]
    assert axolotl.memory_text() == (
        "[8 May 2023] Caroline: I adopted an axolotl last week, her name is Zephyrine! "
        "[shares a photo: a pink axolotl in an aquarium]"
    )
    memory = _memory(conv, axolotl)
    assert memory.created_at == memory.updated_at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert memory.subject == "conv-tiny" and memory.metadata["dia_id"] == "D1:2"
    # category 5 is skipped; the question whose evidence names no turn of the conversation too
    assert [(q.category, q.evidence) for q in conv.questions] == [(4, ("D1:2",)), (1, ("D2:1", "D2:3")), (2, ("D1:4",))]
    assert any("D9:99" in note and "'D'" in note for note in dataset.notes)
    assert "conv-tiny: evidence 'D2:1; D2:3' read as D2:1, D2:3" in dataset.notes
    assert conv.last_day == datetime(2023, 6, 20, 10, 37, tzinfo=UTC)
    # contextual text: each turn with the one it answers, never across sessions
    contextual = memories_of(conv, context=True)
    assert contextual[1].text == axolotl.memory_text() + f" (replying to {conv.turns[0].transcript_line()})"
    first_of_session_2 = next(i for i, t in enumerate(conv.turns) if t.session == 2)
    assert contextual[first_of_session_2].text == conv.turns[first_of_session_2].memory_text()
    assert [m.text for m in memories_of(conv)] == [t.memory_text() for t in conv.turns]


def test_truncation_keeps_exactly_the_last_turns_that_fit(tiny_locomo):
    (conv,) = load_locomo(tiny_locomo).conversations
    lines = conv.transcript()
    assert lines[0] == ("DATE: 1:56 pm on 8 May, 2023", None) and lines[5][0].startswith("DATE: 10:37 am")
    last_two = sum(count_tokens(line + "\n") for line, _ in lines[-2:])
    assert truncate_transcript(lines, last_two) == {"D2:3", "D2:4"}
    assert truncate_transcript(lines, last_two - 1) == {"D2:4"}  # a turn cut in half is lost
    assert truncate_transcript(lines, 10_000) == {t.dia_id for t in conv.turns}


def test_micro_recall_weighs_every_evidence_turn_and_macro_every_question():
    one = QuestionResult("c", 4, ("a",), (1,), {"m": ["a"]}, {}, {})
    many = QuestionResult("c", 1, ("b", "c", "d"), (1,), {"m": ["x"]}, {}, {})
    assert mean_recall([one, many], ranked_by("m"), 1) == 0.5  # 1 and 0, averaged
    assert micro_recall([one, many], ranked_by("m"), 1) == 0.25  # 1 evidence turn found of 4


def test_recall_at_k_and_rrf():
    assert recall_at(["a", "b", "c"], ["c", "x"], 2) == 0.0
    assert recall_at(["a", "b", "c"], ["c", "x"], 3) == 0.5
    # an item ranked second by both lists beats one ranked first by a single list
    assert rrf([["a", "b"], ["c", "b"]], k=2, limit=10)[0] == "b"
    assert rrf([["a", "b"], ["c", "b"]], k=2, limit=1) == ["a", "c"]  # lists cut at the prefetch limit


@pytest.fixture(scope="module")
async def tiny_evaluation(tmp_path_factory, local_embedder) -> tuple[object, Evaluation]:
    tmp = tmp_path_factory.mktemp("locomo")
    dataset = load_locomo(_write_tiny(tmp))
    settings = bench_settings(tmp / "data")
    frame = count_tokens(f"{OPEN}\n{HEADER}\n{CLOSE}")
    ev = await evaluate(dataset, local_embedder, settings, tmp, budgets=(frame + 60, 4000))
    return dataset, ev


async def test_rare_words_are_found_by_bm25_and_every_retriever_ranks_turns(tiny_evaluation):
    _, ev = tiny_evaluation
    axolotl = next(r for r in ev.results if r.evidence == ("D1:2",))
    assert recall_at(axolotl.ranked["bm25"], axolotl.evidence, 5) == 1.0
    assert axolotl.ranked["bm25"][0] == "D1:2"
    assert axolotl.ranked["hybrid"][0] == "D1:2"
    for method in ("dense", "hybrid", "service", "prf", "mmr", "temporal"):
        assert sorted(axolotl.ranked[method]) == sorted(axolotl.dense_full)  # all 8 turns, once each
    assert ev.turns == 8 and len(ev.results) == 3


async def test_a_small_block_keeps_early_evidence_that_truncation_loses(tiny_evaluation):
    _, ev = tiny_evaluation
    small, large = sorted(ev.results[0].kept)
    axolotl = next(r for r in ev.results if r.evidence == ("D1:2",))
    assert "D1:2" in axolotl.kept[small]  # ranked first, so it is in even a tiny block
    assert "D1:2" not in axolotl.truncation[small]  # the oldest session is gone from the thread
    assert len(axolotl.kept[small]) < ev.turns  # the budget did bind
    assert axolotl.kept[large] == axolotl.truncation[large] == set(axolotl.dense_full)  # everything fits


async def test_report_prints_figures_beside_the_published_ones(tiny_evaluation, capsys):
    dataset, ev = tiny_evaluation
    report(dataset, ev, "tiny-locomo.json", budgets=sorted(ev.results[0].kept))
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "evidence recall@k" in out and "1 conversations, 8 turns, 3 questions" in out
    assert "56.8 (BM25)" in out and "target 80.0" in out  # published BM25 @10 and the target
    assert "hybrid + recency" in out and "evidence kept within a token budget" in out
    assert "19.4" in out  # the published truncation figure at 4k, beside ours
    assert "D9:99" in out  # what was dropped while reading is said


def test_the_command_runs_on_any_file_in_the_format(tiny_locomo, memory_model_dir, tmp_path):
    from proxy.cli import app

    result = CliRunner().invoke(
        app,
        [
            "bench",
            "locomo",
            "--data",
            str(tiny_locomo),
            "--model-path",
            str(memory_model_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "hybrid (RRF)" in result.output and "truncation" in result.output
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # the turn embeddings, for the next run
    missing = CliRunner().invoke(app, ["bench", "locomo", "--data", str(tmp_path / "nope.json")])
    assert missing.exit_code != 0
