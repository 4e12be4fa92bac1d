"""The measurements of ``bench quality``: every user's memories stored through the service, every
question recalled and rendered as the proxy does it (``recall`` with the configured settings, then
``render_block`` with the configured budget), and what the block holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.bench.membench import BenchService
from proxy.bench.quality.data import Question, facts, questions
from proxy.config import Settings
from proxy.learn.turn import latest_user_texts, message_text
from proxy.memory.embed import LocalEmbedder
from proxy.memory.render import render_block
from proxy.memory.sealing import Sealer
from proxy.memory.service import MemoryService
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store_edge import EdgeStore
from proxy.owner import Owner

TENANT = "quality"
SECRET = b"bench"
NOW = datetime(2026, 6, 1, tzinfo=UTC)  # when every question is asked


def learned_at(index: int) -> datetime:
    """When the ``index``-th memory was learned: spread over the year before :data:`NOW`, so recency
    (and a confidence floor) weighs on old facts as it does in a real deployment."""
    return NOW - timedelta(days=(index * 37) % 365)


@dataclass(frozen=True)
class Answer:
    """What one request injected for one question."""

    question: Question
    injected: tuple[str, ...]  # fact keys of the injected memories, best first ("" for a distractor)

    @property
    def found(self) -> int:
        return sum(1 for key in self.question.needs if key in self.injected)


@dataclass(frozen=True)
class Variant:
    """A configuration measured: a label and the settings it changes."""

    label: str
    overrides: dict[str, Any]
    query_turns: int = 1  # user turns the query is made of (the proxy: 1)


def share_found(answers: Sequence[Answer]) -> float:
    """The share of all intended facts that were injected."""
    needed = sum(len(a.question.needs) for a in answers)
    return sum(a.found for a in answers) / needed if needed else float("nan")


def share_complete(answers: Sequence[Answer]) -> float:
    """The share of questions with every intended fact injected."""
    return sum(1 for a in answers if a.found == len(a.question.needs)) / len(answers) if answers else float("nan")


def mean_injected(answers: Sequence[Answer]) -> float:
    return sum(len(a.injected) for a in answers) / len(answers) if answers else float("nan")


async def load(store: EdgeStore, embedder: LocalEmbedder, settings: Settings, sparse: Bm25Encoder) -> dict[str, str]:
    """Remember every user's memories through the service; memory id -> fact key ("" for a distractor)."""
    service = BenchService(store, embedder, settings, sparse=sparse)
    keys: dict[str, str] = {}
    for index, fact in enumerate(facts()):
        memory, _ = await service.of(owner(fact.user)).remember(fact.text, kind=fact.kind, now=learned_at(index))
        keys[memory.id] = fact.key
    return keys


def owner(user: str) -> Owner:
    return Owner.of(SECRET, TENANT, user)


def recent_user_texts(items: list[Any], turns: int) -> list[str]:
    """The user messages of the last ``turns`` user turns, oldest first: with 1, what the proxy's
    hooks query with (:func:`proxy.learn.turn.latest_user_texts`); more is the technique measured."""
    if turns == 1:
        return latest_user_texts(items)
    groups: list[list[str]] = [[]]
    for item in reversed(items):
        if item.get("role") == "user":
            groups[-1].append(message_text(item.get("content")))
        elif groups[-1]:
            groups.append([])
    return [text for group in reversed(groups[:turns]) for text in reversed(group)]


async def ask(service: MemoryService, keys: dict[str, str], question: Question, turns: int = 1) -> Answer:
    """The proxy's path: the query from the conversation, recall with the service's settings, the block
    within its budget."""
    settings = service.settings
    query = "\n".join(recent_user_texts(question.conversation, turns))
    recalled = await service.of(owner(question.user)).recall(query, now=NOW)
    block = render_block(recalled, budget_tokens=settings.memory_block_tokens, max_chars=settings.memory_line_chars)
    return Answer(question, tuple(keys[s.memory.id] for s in recalled[: block.count]))


async def evaluate(
    embedder: LocalEmbedder,
    settings: Settings,
    workdir: Path,
    variants: Sequence[Variant],
    *,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, list[Answer]]:
    """Every question of both halves asked under every variant: label -> answers."""
    sparse = Bm25Encoder()
    store = EdgeStore(workdir / "quality", dim=embedder.dim, sealer=Sealer.ephemeral(), collection="quality")
    owner_service = BenchService(store, embedder, settings, sparse=sparse, owns_store=True)
    await owner_service.start()
    try:
        keys = await load(store, embedder, settings, sparse)
        out: dict[str, list[Answer]] = {}
        for variant in variants:
            service = BenchService(store, embedder, settings.model_copy(update=variant.overrides), sparse=sparse)
            answers = []
            for question in questions():
                answers.append(await ask(service, keys, question, variant.query_turns))
                tick()
            out[variant.label] = answers
        return out
    finally:
        await owner_service.aclose()
