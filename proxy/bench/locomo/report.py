"""The report of ``bench locomo``: its tables beside the published figures, its notes, and the command."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.bench.harness import pct, print_notes, print_table, progress_bar
from proxy.bench.locomo.data import CATEGORIES, Dataset, load_locomo
from proxy.bench.locomo.evaluate import (
    BUDGETS,
    KS,
    MMR_LAMBDA,
    PRF_DOCS,
    PRF_WEIGHT,
    Evaluation,
    QuestionResult,
    by_category,
    evaluate,
    kept_share,
    mean,
    mean_recall,
    micro_kept,
    micro_recall,
    rrf,
)
from proxy.bench.membench import bench_settings, load_embedder
from proxy.memory.dates import date_cues
from proxy.memory.store import RRF_K

#: Published reference points (retrieval only, no LLM), from ../shared/data/README.md.
PUBLISHED_BM25 = {5: 0.496, 10: 0.568, 25: 0.647}  # BM25 over single turns, categories 1-4
PUBLISHED_DRAGON = {5: 0.567, 10: 0.662, 25: 0.767}  # LoCoMo paper, DRAGON, all categories
PUBLISHED_TRUNCATION = {4000: 0.194, 8000: 0.369, 16000: 0.761}  # oldest-first truncation, categories 1-4

TARGET_HYBRID_AT_10 = 0.80
TARGET_KEPT_AT_4K = 0.80
TARGET_MICRO_AT_10 = 0.70
TARGET_KEPT_AT_1K = 0.60

METHODS = {
    "dense": "dense only",
    "bm25": "BM25 only",
    "hybrid": "hybrid (RRF of the two lists)",
    "service": "hybrid + recency (service ranking, no floors)",
    "similarity": "service ranking, recency and frequency weights 0",
    "service_floors": "service with the configured floors",
    "prf": f"hybrid + PRF ({PRF_DOCS} memories, weight {PRF_WEIGHT})",
    "mmr": f"service + MMR (lambda {MMR_LAMBDA})",
    "temporal": "service + date cues (memories of a month or year the question names first)",
}

FUSION_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("RRF k=2, 40 per retriever (as shipped, recomputed)", {"k": 2, "limit": 40}),
    ("RRF k=2, 100 per retriever", {"k": 2, "limit": 100}),
    ("RRF k=2, every memory ranked", {"k": 2, "limit": 10_000}),
    ("RRF k=60, 40 per retriever", {"k": 60, "limit": 40}),
    ("RRF k=60, every memory ranked", {"k": 60, "limit": 10_000}),
    ("RRF k=2, dense weight 2", {"k": 2, "limit": 40, "weights": (2.0, 1.0)}),
    ("RRF k=2, BM25 weight 2", {"k": 2, "limit": 40, "weights": (1.0, 2.0)}),
]


def ranked_by(method: str) -> Callable[[QuestionResult], Sequence[str]]:
    """The ranking a result holds for ``method``."""

    def ranking(result: QuestionResult) -> Sequence[str]:
        return result.ranked[method]

    return ranking


def recall_rows(ev: Evaluation, ks: Sequence[int] = KS) -> list[list[str]]:
    groups = by_category(ev.results)
    rows = []
    for method, label in METHODS.items():
        for k in ks:
            cells = [pct(mean_recall(groups[c], ranked_by(method), k)) for c in [*CATEGORIES, None]]
            cells.append(pct(micro_recall(ev.results, ranked_by(method), k)))
            published = pct(PUBLISHED_BM25[k]) + " (BM25)" if method == "bm25" and k in PUBLISHED_BM25 else ""
            if method == "hybrid" and k == 10:
                published = f"target {pct(TARGET_HYBRID_AT_10)} / {pct(TARGET_MICRO_AT_10)}"
            rows.append([label, str(k), *cells, published])
    for k in ks:
        if k in PUBLISHED_DRAGON:
            rows.append(
                [
                    "published: DRAGON (LoCoMo paper), all categories",
                    str(k),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    pct(PUBLISHED_DRAGON[k]),
                ]
            )
    return rows


def kept_within(budget: int) -> Callable[[QuestionResult], set[str]]:
    """The evidence a result's block keeps within ``budget``."""

    def kept(result: QuestionResult) -> set[str]:
        return result.kept[budget]

    return kept


def budget_rows(ev: Evaluation, budgets: Sequence[int] = BUDGETS) -> list[list[str]]:
    groups = by_category(ev.results)
    rows = []
    for budget in budgets:
        block = [pct(mean(kept_share(r.kept[budget], r.evidence) for r in groups[c])) for c in [*CATEGORIES, None]]
        block.append(pct(micro_kept(ev.results, kept_within(budget))))
        trunc = pct(mean(kept_share(r.truncation[budget], r.evidence) for r in ev.results))
        lines = mean(len(r.kept[budget]) for r in ev.results)
        published = pct(PUBLISHED_TRUNCATION[budget]) if budget in PUBLISHED_TRUNCATION else "-"
        rows.append(
            [f"{budget // 1000}k" if budget % 1000 == 0 else str(budget), *block, f"{lines:.0f}", trunc, published]
        )
    return rows


def fusion_rows(ev: Evaluation, ks: Sequence[int] = KS) -> list[list[str]]:
    """Recall of other fusion settings, computed from the complete dense and BM25 rankings."""
    rows = []
    for label, options in FUSION_VARIANTS:

        def fused(r: QuestionResult, options: dict[str, Any] = options) -> list[str]:
            return rrf(
                [r.dense_full, r.sparse_full], k=options["k"], limit=options["limit"], weights=options.get("weights")
            )

        rows.append([label, *[pct(mean_recall(ev.results, fused, k)) for k in ks]])
    union = mean(
        sum(1 for e in r.evidence if e in set(r.dense_full[:10]) | set(r.sparse_full[:10])) / len(r.evidence)
        for r in ev.results
    )
    rows.append(["reference: dense top 10 ∪ BM25 top 10 (up to 20 memories)", "", pct(union), ""])
    return rows


def recency_rows(ev: Evaluation) -> list[list[str]]:
    """Recall@10 of hybrid vs the service, by where the evidence sits in the conversation's timeline."""
    buckets: dict[str, list[QuestionResult]] = {"oldest third of sessions": [], "middle third": [], "newest third": []}
    last_session: dict[str, int] = {}
    for r in ev.results:
        last_session[r.sample_id] = max(last_session.get(r.sample_id, 0), *r.evidence_sessions)
    for r in ev.results:
        position = max(r.evidence_sessions) / max(1, last_session[r.sample_id])  # newest evidence turn
        name = (
            "oldest third of sessions" if position <= 1 / 3 else "middle third" if position <= 2 / 3 else "newest third"
        )
        buckets[name].append(r)
    rows = []
    for name, group in buckets.items():
        rows.append(
            [
                name,
                str(len(group)),
                pct(mean_recall(group, lambda r: r.ranked["hybrid"], 10)),
                pct(mean_recall(group, lambda r: r.ranked["similarity"], 10)),
                pct(mean_recall(group, lambda r: r.ranked["service"], 10)),
            ]
        )
    return rows


def temporal_note(ev: Evaluation) -> str:
    """Recall@10 of the service with and without date cues, on the questions that name a month or a year."""
    cued = [r for r in ev.results if date_cues(r.question)]
    return (
        f"date cues: {len(cued)} questions name a month or a year; on them recall@10 (macro / micro) is "
        f"{pct(mean_recall(cued, ranked_by('service'), 10))} / {pct(micro_recall(cued, ranked_by('service'), 10))} "
        f"for the service and {pct(mean_recall(cued, ranked_by('temporal'), 10))} / "
        f"{pct(micro_recall(cued, ranked_by('temporal'), 10))} with its memories of that month or year first."
    )


def notes(dataset: Dataset, ev: Evaluation) -> list[str]:
    """What the tables do not say: timings, how each row is made, where the published figures come from,
    and what was repaired or dropped while reading the file."""
    rate = ev.turns / ev.embed_seconds if ev.embed_seconds > 0 else float("inf")
    questions = len(ev.results)
    sim, rec, freq, half_life = ev.weights
    recency = statistics.median(ev.recency_terms) if ev.recency_terms else float("nan")
    embedded = "read from --cache-dir" if ev.embed_cached else f"{rate:.0f} turns/s"
    return [
        (
            f"time: embedding {ev.turns} turns {ev.embed_seconds:.1f} s ({embedded}); loading the store "
            f"{ev.load_seconds:.1f} s; {questions} questions {ev.query_seconds:.1f} s "
            f"({ev.query_seconds / max(1, questions) * 1000:.0f} ms each, all rankings above)."
        ),
        (
            f"hybrid (RRF) = the dense and BM25 rankings fused as the store fuses them, {ev.candidates} candidates per "
            f"retriever (max of memory_candidates and k), RRF k={RRF_K}, equal scores ordered by id (the store's own "
            "query breaks them by its internal point order, which changes between runs). The service fuses its own "
            "candidates (the store's hybrid query) again: cosine and BM25 over the candidates, "
            "equal scores sharing a rank, ties by date then id; it uses confidence to gate, not to order."
        ),
        (
            "recency: each turn is stored with its session's date as created_at/updated_at, and questions are asked as "
            f"of the day after the conversation's last session. Confidence = {sim} similarity + {rec} recency + "
            f"{freq} frequency (half-life {half_life:g} days), so the last weeks' turns get up to "
            f"+{rec / (sim + rec + freq):.2f} of confidence and turns months old almost nothing (median recency term "
            f"of what the service returned: {recency:.2f}). Recency moves confidence, and so the floors, not the "
            "order: see the recency table (re-sorting by confidence lost evidence from the oldest sessions)."
        ),
        (
            "'service ranking, recency and frequency weights 0' is a diagnosis row: the same service with only the "
            "similarity term (max of cosine and lexical share), to separate what re-ranking does from what recency does."
        ),
        (
            f"'service with the configured floors' also drops memories below min_similarity {ev.floors[0]} / "
            f"min_confidence {ev.floors[1]}, as the proxy does before injecting, so it may return fewer than k."
        ),
        (
            f"block lines are capped at {ev.block_line_chars} characters (memory_line_chars). A turn costs "
            f"{ev.block_line_tokens:.1f} tokens on average as a block line (the line's [date], the text's own "
            f"[date], JSON quotes) and {ev.transcript_line_tokens:.1f} as a transcript line."
        ),
        temporal_note(ev),
        "published figures: ../shared/data/README.md (all 10 LoCoMo conversations; this file may hold fewer).",
        (
            "the block rows: the service's first 100 memories (no floors), then the rest of the conversation in "
            "fused order, rendered as the proxy renders it until the budget is full; micro = share of all evidence turns."
        ),
        *dataset.notes,
    ]


def report(
    dataset: Dataset, ev: Evaluation, data: Path | str, *, ks: Sequence[int] = KS, budgets: Sequence[int] = BUDGETS
) -> None:
    groups = by_category(ev.results)
    counts = " ".join(f"{CATEGORIES[c]} {len(groups[c])}" for c in CATEGORIES)
    cat_columns = [f"{CATEGORIES[c]} ({c})" for c in CATEGORIES]
    print_table(
        f"memproxy bench locomo: evidence recall@k, % ({Path(data).name}: {len(dataset.conversations)} conversations, "
        f"{ev.turns} turns, {len(ev.results)} questions of categories 1-4)",
        ["retrieval", "k", *cat_columns, "cats 1-4", "micro 1-4", "published / target"],
        recall_rows(ev, ks),
        caption=(
            f"questions per category: {counts}. Per category and 'cats 1-4': macro (each question's share of its "
            "evidence, averaged); 'micro': the share of all evidence turns found"
        ),
    )
    print_table(
        "evidence kept within a token budget, % (block = memproxy's injected block, service order; "
        "truncation = last N tokens of the transcript)",
        [
            "budget",
            *[f"block {CATEGORIES[c]}" for c in CATEGORIES],
            "block cats 1-4",
            "block micro 1-4",
            "turns in block",
            "truncation cats 1-4",
            "published truncation",
        ],
        budget_rows(ev, budgets),
        caption=(
            f"targets: block keeps >= {pct(TARGET_KEPT_AT_1K)} % of the evidence at 1k tokens and >= "
            f"{pct(TARGET_KEPT_AT_4K)} % at 4k"
        ),
    )
    print_table(
        "fusion study, cats 1-4, % (same questions; not used to pick the shipped settings)",
        ["fusion of the complete dense and BM25 rankings", *[f"@{k}" for k in ks]],
        fusion_rows(ev, ks),
    )
    print_table(
        "recency: recall@10 by where the question's newest evidence turn sits in its conversation, %",
        ["evidence in", "questions", "hybrid (RRF)", "service, similarity only", "service (+recency)"],
        recency_rows(ev),
    )
    print_notes(notes(dataset, ev))


def save_rankings(ev: Evaluation, path: Path) -> None:
    """Every question's rankings (dia_ids, best first) as JSON lines: two runs can be compared with diff."""
    with path.open("w") as out:
        for r in ev.results:
            line = {"sample_id": r.sample_id, "question": r.question, "evidence": r.evidence, "ranked": r.ranked}
            out.write(json.dumps(line) + "\n")


def run(
    data: Path,
    *,
    model_path: Path | None = None,
    cache_dir: Path | None = None,
    rankings: Path | None = None,
    context: bool = False,
) -> None:
    """``memproxy bench locomo``: read the file, evaluate it with the real embedder, print the report."""
    dataset = load_locomo(data)
    if not dataset.conversations:
        raise SystemExit(f"{data}: no conversations with turns")
    with tempfile.TemporaryDirectory(prefix="memproxy-locomo-") as tmp, progress_bar() as bar:
        task = bar.add_task("questions", total=dataset.questions)
        settings = bench_settings(Path(tmp))
        embedder = load_embedder(settings, model_path, cache_size=64)
        try:
            ev = asyncio.run(
                evaluate(
                    dataset,
                    embedder,
                    settings,
                    Path(tmp),
                    cache_dir=cache_dir,
                    progress=lambda m: bar.update(task, description=m.rstrip(" .")),
                    tick=lambda: bar.advance(task),
                    context=context,
                )
            )
        finally:
            embedder.close()
    if rankings is not None:
        save_rankings(ev, rankings)
    report(dataset, ev, data)
