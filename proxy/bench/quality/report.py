"""The report of ``bench quality``: for each configuration, the share of intended facts the proxy
injected and how many memories it injected per request, on the dev and test halves."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.bench.harness import pct, print_notes, print_table, progress_bar
from proxy.bench.membench import bench_settings, load_embedder
from proxy.bench.quality.data import facts, questions
from proxy.bench.quality.evaluate import Answer, Variant, evaluate, mean_injected, share_complete, share_found

HOWS = ("paraphrase", "implied", "combined", "follow-up", "topic-switch")
TARGET_FOUND = 0.90
TARGET_INJECTED = 6.0

#: What is measured: the configured settings first, then the alternatives they were chosen against.
NO_PINS: dict[str, Any] = {"memory_pinned_kinds": []}
NO_FLOORS: dict[str, Any] = {
    "memory_min_similarity": 0.0,
    "memory_relative_similarity": 0.0,
    "memory_min_confidence": 0,
}
VARIANTS = [
    Variant("configured settings", {}),
    Variant("no pinned constraints", NO_PINS),
    Variant("confidence floor 0.2", {"memory_min_confidence": 0.2}),
    Variant(
        "before: floors 0.25 / 0.2, no pins",
        {**NO_PINS, "memory_min_similarity": 0.25, "memory_relative_similarity": 0.0, "memory_min_confidence": 0.2},
    ),
    Variant("no floors, no pins, top 8", {**NO_PINS, **NO_FLOORS}),
    Variant("no floors, no pins, top 6", {**NO_PINS, **NO_FLOORS, "memory_top_k": 6}),
    Variant("pins, no floors, top 6", {**NO_FLOORS, "memory_top_k": 6}),
    Variant("query: last 2 user turns", {}, query_turns=2),
]


def rows(results: dict[str, list[Answer]]) -> list[list[str]]:
    out = []
    for label, answers in results.items():
        halves = [[a for a in answers if a.question.split == split] for split in ("dev", "test")]
        by_how = [[a for a in answers if a.question.how == how] for how in HOWS]
        out.append(
            [
                label,
                *[pct(share_found(half)) for half in halves],
                pct(share_found(answers)),
                f"{mean_injected(answers):.1f}",
                pct(share_complete(answers)),
                *[pct(share_found(group)) for group in by_how],
            ]
        )
    return out


def report(results: dict[str, list[Answer]], settings_line: str) -> None:
    n_facts = len([f for f in facts() if f.key])
    n_distractors = len([f for f in facts() if not f.key])
    users = len({f.user for f in facts()})
    print_table(
        f"memproxy bench quality: intended facts injected, % ({users} users, {n_facts} facts + {n_distractors} "
        f"distractors, {len(questions())} questions: {len(questions('dev'))} dev, {len(questions('test'))} test)",
        ["configuration", "dev", "test", "all", "per request", "complete", *HOWS],
        rows(results),
        caption=(
            f"target: >= {pct(TARGET_FOUND)} % of intended facts injected at <= {TARGET_INJECTED:g} memories per "
            "request. dev / test / all and per kind of question: share of the facts the questions need that the "
            "block holds; per request: memories in the block (all questions); complete: questions with every "
            "fact they need"
        ),
    )
    print_notes(
        [
            (
                f"every memory is stored through MemoryService.remember and every question asked through "
                f"MemoryService.recall then render_block, as the proxy does; configured: {settings_line}."
            ),
            "dev = even questions of each user (tuning), test = odd ones (never tuned on).",
        ]
    )


def run(*, model_path: Path | None = None, variants: Sequence[Variant] = VARIANTS) -> None:
    """``memproxy bench quality``: store the memories, ask every question under every variant, print the report."""
    with tempfile.TemporaryDirectory(prefix="memproxy-quality-") as tmp, progress_bar() as bar:
        settings = bench_settings(Path(tmp))
        task = bar.add_task("questions", total=len(questions()) * len(variants))
        embedder = load_embedder(settings, model_path, cache_size=256)
        try:
            results = asyncio.run(evaluate(embedder, settings, Path(tmp), variants, tick=lambda: bar.advance(task)))
        finally:
            embedder.close()
    line = (
        f"top_k {settings.memory_top_k}, min_similarity {settings.memory_min_similarity}, relative "
        f"{settings.memory_relative_similarity}, min_confidence {settings.memory_min_confidence}, block "
        f"{settings.memory_block_tokens} tokens"
    )
    report(results, line)
