"""``memproxy bench locomo``: does recall find the turns that answer a question, and do they fit a budget?

Every dialog turn of a LoCoMo-format file is stored as one memory ("[8 May 2023] Caroline: ...",
created and updated at its session's date, one subject per conversation) in the embedded store,
with the real embedder. Each question of categories 1-4 is asked of its conversation's subject
and we measure **evidence recall@k**: the share of the question's evidence turns (``dia_id``)
among the first k memories, averaged over questions, for

- dense only (cosine over the embedder's vectors),
- BM25 only (the store's sparse vectors with the collection's IDF),
- hybrid: dense + BM25 fused by RRF, exactly the store query recall uses (``memory_candidates``
  per retriever),
- the service: :meth:`MemoryService.recall`, hybrid candidates re-ranked by confidence
  (similarity + recency + frequency), with its floors off, and once more with the operator's floors.

And **evidence kept within a token budget**: the block the proxy would inject (``render_block``),
memories in hybrid rank order until the budget, against keeping the last N tokens of the transcript
(oldest-first truncation, what a thread does when it outgrows the context window).

The file is an argument: any file in LoCoMo's format works (see ``load_locomo``).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from proxy.bench.harness import pct, print_notes, print_table
from proxy.bench.membench import BenchService, bench_settings, embed_cached, load_embedder
from proxy.config import Settings
from proxy.memory import store_edge
from proxy.memory.embed import LocalEmbedder
from proxy.memory.models import Memory, ScoredMemory, Source
from proxy.memory.render import memory_line, render_block
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store import DENSE, RRF_K, SPARSE, FilterSpec, MemoryPoint, SparseVec, build_filter
from proxy.memory.store_edge import EdgeStore
from proxy.memory.tokens import count_tokens
from proxy.owner import Owner

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
KS = (5, 10, 25)
BUDGETS = (4000, 8000, 16000)
TENANT = "locomo"
SECRET = b"bench"
"""The benchmark's own server secret: owners' pseudonyms only need to be stable within a run."""

#: Published reference points (retrieval only, no LLM), from ../shared/data/README.md.
PUBLISHED_BM25 = {5: 0.496, 10: 0.568, 25: 0.647}  # BM25 over single turns, categories 1-4
PUBLISHED_DRAGON = {5: 0.567, 10: 0.662, 25: 0.767}  # LoCoMo paper, DRAGON, all categories
PUBLISHED_TRUNCATION = {4000: 0.194, 8000: 0.369, 16000: 0.761}  # oldest-first truncation, categories 1-4

TARGET_HYBRID_AT_10 = 0.80
TARGET_KEPT_AT_4K = 0.80

_DIA_ID = re.compile(r"^D:?(\d+):(\d+)$")
_DIA_ID_STRICT = re.compile(r"^D\d+:\d+$")
_SESSION = re.compile(r"^session_(\d+)$")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B, %Y", "%d %B %Y")


# --- the data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    dia_id: str
    session: int
    speaker: str
    text: str
    caption: str | None
    at: datetime

    @property
    def day(self) -> str:
        return f"{self.at.day} {self.at:%B %Y}"

    def _said(self) -> str:
        photo = f" [shares a photo: {self.caption}]" if self.caption else ""
        return f"{self.speaker}: {self.text}{photo}"

    def memory_text(self) -> str:
        """The memory stored for this turn: its session's day, the speaker, the text, the photo's caption."""
        return f"[{self.day}] {self._said()}"

    def transcript_line(self) -> str:
        return self._said()


@dataclass(frozen=True)
class Question:
    question: str
    category: int
    evidence: tuple[str, ...]


@dataclass
class Conversation:
    sample_id: str
    turns: list[Turn]
    questions: list[Question]
    session_dates: dict[int, str]  # session number -> the file's date string

    @property
    def last_day(self) -> datetime:
        return max(turn.at for turn in self.turns)

    def transcript(self) -> list[tuple[str, str | None]]:
        """(line, dia_id) in order: a date line opens each session, then one line per turn."""
        lines: list[tuple[str, str | None]] = []
        session = None
        for turn in self.turns:
            if turn.session != session:
                session = turn.session
                lines.append((f"DATE: {self.session_dates.get(session, turn.day)}", None))
            lines.append((turn.transcript_line(), turn.dia_id))
        return lines


@dataclass
class Dataset:
    conversations: list[Conversation]
    notes: list[str] = field(default_factory=list)  # what was repaired or dropped while reading

    @property
    def questions(self) -> int:
        return sum(len(c.questions) for c in self.conversations)

    @property
    def turns(self) -> int:
        return sum(len(c.turns) for c in self.conversations)


def parse_evidence(items: Iterable[object]) -> tuple[list[str], list[str]]:
    """Evidence dia_ids and the parts that are none. Malformed strings are split on ``;``, ``,`` and
    spaces ("D8:6; D9:17" -> D8:6, D9:17); "D:11:26" is read as D11:26."""
    found: list[str] = []
    rejected: list[str] = []
    for item in items:
        for part in re.split(r"[;,\s]+", str(item)):
            if not part:
                continue
            match = _DIA_ID.match(part)
            if match:
                dia_id = f"D{int(match[1])}:{int(match[2])}"
                if dia_id not in found:
                    found.append(dia_id)
            else:
                rejected.append(part)
    return found, rejected


def parse_date(text: str) -> datetime | None:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def load_locomo(path: Path | str) -> Dataset:
    """Read a LoCoMo-format file: a list of samples with ``conversation`` and ``qa`` (see the data README)."""
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, dict):
        raw = [raw]
    dataset = Dataset([])
    for index, sample in enumerate(raw):
        sample_id = str(sample.get("sample_id") or f"sample-{index}")
        conv = sample.get("conversation") or {}
        sessions = sorted(
            (int(m[1]), value) for key, value in conv.items() if (m := _SESSION.match(key)) and isinstance(value, list)
        )
        turns: list[Turn] = []
        dates: dict[int, str] = {}
        previous = datetime(2000, 1, 1, tzinfo=UTC)
        for number, items in sessions:
            raw_date = str(conv.get(f"session_{number}_date_time") or "")
            at = parse_date(raw_date) if raw_date else None
            if at is None:
                dataset.notes.append(
                    f"{sample_id} session {number}: date {raw_date!r} unreadable, the previous session's used"
                )
                at = previous
            previous = at
            dates[number] = raw_date or at.date().isoformat()
            for item in items:
                text = str(item.get("text") or "").strip()
                if not text or not item.get("dia_id"):
                    continue
                ids, _ = parse_evidence([item["dia_id"]])
                dia_id = ids[0] if len(ids) == 1 else str(item["dia_id"])
                caption = str(item.get("blip_caption") or "").strip() or None
                turns.append(Turn(dia_id, number, str(item.get("speaker") or "?"), text, caption, at))
        known = {turn.dia_id for turn in turns}
        questions: list[Question] = []
        for qa in sample.get("qa") or []:
            category = qa.get("category")
            if category not in CATEGORIES:
                continue
            raw_evidence = [str(e) for e in qa.get("evidence") or []]
            evidence, rejected = parse_evidence(raw_evidence)
            for item in raw_evidence:
                ids, junk = parse_evidence([item])
                if ids and not junk and not _DIA_ID_STRICT.match(item):
                    dataset.notes.append(f"{sample_id}: evidence {item!r} read as {', '.join(ids)}")
            unknown = [e for e in evidence if e not in known]
            if rejected or unknown:
                dataset.notes.append(
                    f"{sample_id}: evidence {qa.get('evidence')!r} -> dropped {rejected + unknown} (not a turn of the conversation)"
                )
            evidence = [e for e in evidence if e in known]
            if not evidence:
                dataset.notes.append(
                    f"{sample_id}: question {str(qa.get('question'))[:60]!r} has no usable evidence; skipped"
                )
                continue
            questions.append(Question(str(qa.get("question") or ""), int(category), tuple(evidence)))
        if turns:
            dataset.conversations.append(Conversation(sample_id, turns, questions, dates))
    return dataset


# --- metrics ---------------------------------------------------------------------------------------


def recall_at(ranked: Sequence[str], evidence: Sequence[str], k: int) -> float:
    """Share of ``evidence`` among the first ``k`` of ``ranked``."""
    top = set(ranked[:k])
    return sum(1 for e in evidence if e in top) / len(evidence)


def kept_share(kept: set[str], evidence: Sequence[str]) -> float:
    return sum(1 for e in evidence if e in kept) / len(evidence)


def truncate_transcript(lines: Sequence[tuple[str, str | None]], budget: int) -> set[str]:
    """dia_ids of the turns a thread still holds when it keeps only its last ``budget`` tokens.

    Whole lines are kept from the end while they fit (a line cut in half counts as lost).
    """
    kept: set[str] = set()
    used = 0
    for line, dia_id in reversed(lines):
        used += count_tokens(line + "\n")
        if used > budget:
            break
        if dia_id is not None:
            kept.add(dia_id)
    return kept


def rrf(
    rankings: Sequence[Sequence[str]], *, k: int = RRF_K, limit: int, weights: Sequence[float] | None = None
) -> list[str]:
    """Reciprocal rank fusion of ranked id lists, each cut at ``limit`` (what a prefetch returns)."""
    scores: dict[str, float] = {}
    order: dict[str, int] = {}
    for index, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[index]
        for rank, item in enumerate(ranking[:limit]):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank + 1)
            order.setdefault(item, len(order))
    return sorted(scores, key=lambda item: (-scores[item], order[item]))


@dataclass
class QuestionResult:
    sample_id: str
    category: int
    evidence: tuple[str, ...]
    evidence_sessions: tuple[int, ...]
    ranked: dict[str, list[str]]  # method -> dia_ids, best first
    kept: dict[int, set[str]]  # budget -> dia_ids in the block
    truncation: dict[int, set[str]]  # budget -> dia_ids left in the truncated transcript
    dense_full: list[str] = field(default_factory=list)  # complete rankings, for the fusion study
    sparse_full: list[str] = field(default_factory=list)


METHODS = {
    "dense": "dense only",
    "bm25": "BM25 only",
    "hybrid": "hybrid (RRF)",
    "service": "hybrid + recency (service ranking, no floors)",
    "similarity": "service ranking, recency and frequency weights 0",
    "service_floors": "service with the configured floors",
}


def mean_recall(results: Sequence[QuestionResult], ranking: Callable[[QuestionResult], Sequence[str]], k: int) -> float:
    values = [recall_at(ranking(r), r.evidence, k) for r in results]
    return statistics.fmean(values) if values else float("nan")


def by_category(results: Sequence[QuestionResult]) -> dict[int | None, list[QuestionResult]]:
    groups: dict[int | None, list[QuestionResult]] = {c: [r for r in results if r.category == c] for c in CATEGORIES}
    groups[None] = list(results)
    return groups


@dataclass
class Evaluation:
    results: list[QuestionResult]
    turns: int
    embed_seconds: float
    embed_cached: bool
    load_seconds: float
    query_seconds: float
    candidates: int
    block_line_chars: int
    weights: tuple[float, float, float, float]  # similarity, recency, frequency, half-life days
    floors: tuple[float, float]  # min_similarity, min_confidence
    recency_terms: list[float] = field(default_factory=list)  # recency term of every recalled memory
    block_line_tokens: float = float("nan")  # mean tokens of a turn rendered as a block line
    transcript_line_tokens: float = float("nan")  # mean tokens of a turn as a transcript line


# --- the run ---------------------------------------------------------------------------------------


def _memory(conv: Conversation, turn: Turn) -> Memory:
    return Memory(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"locomo/{conv.sample_id}/{turn.dia_id}")),
        tenant=TENANT,
        subject=conv.sample_id,
        text=turn.memory_text(),
        created_at=turn.at,
        updated_at=turn.at,
        source=Source(thread_id=conv.sample_id, message_ids=[turn.dia_id]),
        metadata={"dia_id": turn.dia_id, "session": turn.session, "session_date": turn.day, "speaker": turn.speaker},
    )


async def _ranking(
    store: EdgeStore,
    scope: Owner,
    *,
    dense: Sequence[float] | None = None,
    sparse: SparseVec | None = None,
    limit: int,
    now: datetime,
) -> list[str]:
    """Point ids, best first: dense alone, BM25 alone, or both fused exactly as ``EdgeStore.hybrid_query``
    fuses them (same prefetches, RRF k), but without payloads, so ranking a whole conversation is cheap.
    The store has no sparse-only query (recall never needs one), so this asks the shard directly,
    with the store's own filter, on the store's thread."""
    flt = build_filter(FilterSpec(scope, now=now), store_edge._D)
    queries = []
    if dense is not None:
        queries.append(qe.Query.Nearest([float(x) for x in dense], using=DENSE))
    if sparse is not None and sparse.indices:
        queries.append(qe.Query.Nearest(qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE))
    if not queries:
        return []
    if len(queries) == 1:
        request = qe.QueryRequest(limit=limit, query=queries[0], filter=flt, with_payload=False, with_vector=False)
    else:
        request = qe.QueryRequest(
            limit=limit,
            prefetches=[qe.Prefetch(limit=limit, query=q, filter=flt) for q in queries],
            query=qe.Fusion.Rrf(k=RRF_K),
            filter=flt,
            with_payload=False,
            with_vector=False,
        )
    points = await store._call(lambda: store.shard.query(request))
    return [str(p.id) for p in points]


def _scored(memories: Sequence[Memory]) -> list[ScoredMemory]:
    return [
        ScoredMemory(memory=m, confidence=0, similarity=0, semantic=0, lexical=0, recency=0, frequency=0, rank=i)
        for i, m in enumerate(memories)
    ]


async def evaluate(
    dataset: Dataset,
    embedder: LocalEmbedder,
    settings: Settings,
    workdir: Path,
    *,
    cache_dir: Path | None = None,
    ks: Sequence[int] = KS,
    budgets: Sequence[int] = BUDGETS,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    say = progress or (lambda _msg: None)
    memories = [(conv, turn, _memory(conv, turn)) for conv in dataset.conversations for turn in conv.turns]
    say(f"embedding {len(memories)} turns ...")
    vectors, embed_seconds, cached = await embed_cached(embedder, [m.text for _, _, m in memories], cache_dir)
    sparse = Bm25Encoder()
    store = EdgeStore(workdir / "locomo", dim=embedder.dim, collection="locomo")
    service = BenchService(store, embedder, settings, sparse=sparse, owns_store=True)
    await service.start()
    try:
        started = time.perf_counter()
        for conv in dataset.conversations:
            scope = Owner.of(SECRET, TENANT, conv.sample_id)
            points = [
                MemoryPoint(memory, vectors[i], sparse.document(memory.text))
                for i, (c, _, memory) in enumerate(memories)
                if c is conv
            ]
            for i in range(0, len(points), 256):
                await store.upsert(scope, points[i : i + 256])
        load_seconds = time.perf_counter() - started

        top = max(ks)
        candidates = max(settings.memory_candidates, top)
        # the same store, ranked by similarity alone: separates what recency does from what re-ranking does
        plain = settings.model_copy(update={"memory_weight_recency": 0.0, "memory_weight_frequency": 0.0})
        similarity_only = BenchService(store, embedder, plain, sparse=sparse)
        results: list[QuestionResult] = []
        recency_terms: list[float] = []
        started = time.perf_counter()
        for conv in dataset.conversations:
            say(f"asking {len(conv.questions)} questions of {conv.sample_id} ...")
            scope = Owner.of(SECRET, TENANT, conv.sample_id)
            now = conv.last_day + timedelta(days=1)
            size = len(conv.turns)
            mine = {m.id: (t, m) for c, t, m in memories if c is conv}
            session_of = {t.dia_id: t.session for t in conv.turns}
            transcript = conv.transcript()
            truncation = {b: truncate_transcript(transcript, b) for b in budgets}

            def dia(ids: Iterable[str], mine: dict[str, tuple[Turn, Memory]] = mine) -> list[str]:
                return [mine[i][0].dia_id for i in ids]

            for q in conv.questions:
                dense = await embedder.embed_query(q.question)
                query_sparse = sparse.query(q.question)
                dense_full = dia(await _ranking(store, scope, dense=dense, limit=size, now=now))
                sparse_full = dia(await _ranking(store, scope, sparse=query_sparse, limit=size, now=now))
                hybrid = await store.hybrid_query(scope, dense, query_sparse, limit=candidates, now=now)
                recalled = await service.of(scope).recall(
                    q.question, top_k=top, min_confidence=0.0, min_similarity=0.0, now=now
                )
                recency_terms.extend(s.recency for s in recalled)
                floored = await service.of(scope).recall(q.question, top_k=top, now=now)
                by_similarity = await similarity_only.of(scope).recall(
                    q.question, top_k=top, min_confidence=0.0, min_similarity=0.0, now=now
                )
                everything = [
                    mine[i][1]
                    for i in await _ranking(store, scope, dense=dense, sparse=query_sparse, limit=size, now=now)
                ]
                kept = {}
                for budget in budgets:
                    block = render_block(
                        _scored(everything), budget_tokens=budget, max_chars=settings.memory_line_chars
                    )
                    kept[budget] = set(dia(m.id for m in everything[: block.count]))
                results.append(
                    QuestionResult(
                        conv.sample_id,
                        q.category,
                        q.evidence,
                        tuple(sorted({session_of[e] for e in q.evidence})),
                        {
                            "dense": dense_full[:top],
                            "bm25": sparse_full[:top],
                            "hybrid": dia(h.memory.id for h in hybrid)[:top],
                            "service": dia(s.memory.id for s in recalled),
                            "similarity": dia(s.memory.id for s in by_similarity),
                            "service_floors": dia(s.memory.id for s in floored),
                        },
                        kept,
                        truncation,
                        dense_full,
                        sparse_full,
                    )
                )
        query_seconds = time.perf_counter() - started
    finally:
        await service.aclose()
    w = service.weights
    block_tokens = [
        count_tokens(memory_line(item, settings.memory_line_chars) + "\n")
        for item in _scored([m for _, _, m in memories])
    ]
    transcript_tokens = [count_tokens(t.transcript_line() + "\n") for _, t, _ in memories]
    return Evaluation(
        results=results,
        turns=len(memories),
        embed_seconds=embed_seconds,
        embed_cached=cached,
        load_seconds=load_seconds,
        query_seconds=query_seconds,
        candidates=candidates,
        block_line_chars=settings.memory_line_chars,
        weights=(w.similarity, w.recency, w.frequency, w.half_life_days),
        floors=(settings.memory_min_similarity, settings.memory_min_confidence),
        recency_terms=recency_terms,
        block_line_tokens=statistics.fmean(block_tokens) if block_tokens else float("nan"),
        transcript_line_tokens=statistics.fmean(transcript_tokens) if transcript_tokens else float("nan"),
    )


# --- the report ------------------------------------------------------------------------------------


def recall_rows(ev: Evaluation, ks: Sequence[int] = KS) -> list[list[str]]:
    groups = by_category(ev.results)
    rows = []
    for method, label in METHODS.items():
        for k in ks:
            cells = [pct(mean_recall(groups[c], lambda r, m=method: r.ranked[m], k)) for c in [*CATEGORIES, None]]
            published = pct(PUBLISHED_BM25[k]) + " (BM25)" if method == "bm25" and k in PUBLISHED_BM25 else ""
            if method == "hybrid" and k == 10:
                published = f"target {pct(TARGET_HYBRID_AT_10)}"
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
                    pct(PUBLISHED_DRAGON[k]),
                ]
            )
    return rows


def budget_rows(ev: Evaluation, budgets: Sequence[int] = BUDGETS) -> list[list[str]]:
    groups = by_category(ev.results)
    rows = []
    for budget in budgets:
        block = [pct(_mean(kept_share(r.kept[budget], r.evidence) for r in groups[c])) for c in [*CATEGORIES, None]]
        trunc = pct(_mean(kept_share(r.truncation[budget], r.evidence) for r in ev.results))
        lines = _mean(len(r.kept[budget]) for r in ev.results)
        published = pct(PUBLISHED_TRUNCATION[budget]) if budget in PUBLISHED_TRUNCATION else "-"
        rows.append(
            [f"{budget // 1000}k" if budget % 1000 == 0 else str(budget), *block, f"{lines:.0f}", trunc, published]
        )
    return rows


FUSION_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("RRF k=2, 40 per retriever (as shipped, recomputed)", {"k": 2, "limit": 40}),
    ("RRF k=2, 100 per retriever", {"k": 2, "limit": 100}),
    ("RRF k=2, every memory ranked", {"k": 2, "limit": 10_000}),
    ("RRF k=60, 40 per retriever", {"k": 60, "limit": 40}),
    ("RRF k=60, every memory ranked", {"k": 60, "limit": 10_000}),
    ("RRF k=2, dense weight 2", {"k": 2, "limit": 40, "weights": (2.0, 1.0)}),
    ("RRF k=2, BM25 weight 2", {"k": 2, "limit": 40, "weights": (1.0, 2.0)}),
]


def fusion_rows(ev: Evaluation, ks: Sequence[int] = KS) -> list[list[str]]:
    """Recall of other fusion settings, computed from the complete dense and BM25 rankings."""
    rows = []
    for label, options in FUSION_VARIANTS:

        def fused(r: QuestionResult, options: dict[str, Any] = options) -> list[str]:
            return rrf(
                [r.dense_full, r.sparse_full], k=options["k"], limit=options["limit"], weights=options.get("weights")
            )

        rows.append([label, *[pct(mean_recall(ev.results, fused, k)) for k in ks]])
    union = _mean(
        sum(1 for e in r.evidence if e in set(r.dense_full[:10]) | set(r.sparse_full[:10])) / len(r.evidence)
        for r in ev.results
    )
    rows.append(["reference: dense top 10 ∪ BM25 top 10 (up to 20 memories)", "", pct(union), ""])
    return rows


def recency_rows(ev: Evaluation) -> list[list[str]]:
    """Recall@10 of hybrid vs the service, by where the evidence sits in the conversation's timeline."""
    buckets: dict[str, list[QuestionResult]] = {"oldest third of sessions": [], "middle third": [], "newest third": []}
    last_session = {}
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


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def report(
    dataset: Dataset, ev: Evaluation, data: Path | str, *, ks: Sequence[int] = KS, budgets: Sequence[int] = BUDGETS
) -> None:
    groups = by_category(ev.results)
    counts = " ".join(f"{CATEGORIES[c]} {len(groups[c])}" for c in CATEGORIES)
    cat_columns = [f"{CATEGORIES[c]} ({c})" for c in CATEGORIES]
    print_table(
        f"memproxy bench locomo: evidence recall@k, % ({Path(data).name}: {len(dataset.conversations)} conversations, "
        f"{ev.turns} turns, {len(ev.results)} questions of categories 1-4)",
        ["retrieval", "k", *cat_columns, "cats 1-4", "published / target"],
        recall_rows(ev, ks),
        caption=f"questions per category: {counts}",
    )
    print_table(
        "evidence kept within a token budget, % (block = memproxy's injected block, hybrid rank order; "
        "truncation = last N tokens of the transcript)",
        [
            "budget",
            *[f"block {CATEGORIES[c]}" for c in CATEGORIES],
            "block cats 1-4",
            "turns in block",
            "truncation cats 1-4",
            "published truncation",
        ],
        budget_rows(ev, budgets),
        caption=f"target: block keeps >= {pct(TARGET_KEPT_AT_4K)} % of the evidence at 4k tokens",
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
    rate = ev.turns / ev.embed_seconds if ev.embed_seconds > 0 else float("inf")
    questions = len(ev.results)
    sim, rec, freq, half_life = ev.weights
    recency = statistics.median(ev.recency_terms) if ev.recency_terms else float("nan")
    embedded = "read from --cache-dir" if ev.embed_cached else f"{rate:.0f} turns/s"
    notes = [
        (
            f"time: embedding {ev.turns} turns {ev.embed_seconds:.1f} s ({embedded}); loading the store "
            f"{ev.load_seconds:.1f} s; {questions} questions {ev.query_seconds:.1f} s "
            f"({ev.query_seconds / max(1, questions) * 1000:.0f} ms each, all rankings above)."
        ),
        (
            f"hybrid (RRF) = the store's own hybrid query, {ev.candidates} candidates per retriever (max of "
            f"memory_candidates and k), RRF k={RRF_K}. The service keeps that order and uses confidence to drop "
            "weak or stale candidates (its floors), so the service rows track the hybrid row."
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
        "published figures: ../shared/data/README.md (all 10 LoCoMo conversations; this file may hold fewer).",
        (
            "retrieval figures repeat between runs to within about 0.2 point (exact search, no HNSW index at this size; "
            "equal BM25 scores may tie-break differently); timings do not: 2-core machine shared with other work."
        ),
    ]
    notes.extend(dataset.notes)
    print_notes(notes)


def run(data: Path, *, model_path: Path | None = None, cache_dir: Path | None = None) -> None:
    dataset = load_locomo(data)
    if not dataset.conversations:
        raise SystemExit(f"{data}: no conversations with turns")
    with tempfile.TemporaryDirectory(prefix="memproxy-locomo-") as tmp:
        settings = bench_settings(Path(tmp))
        embedder = load_embedder(settings, model_path, cache_size=64)
        try:
            ev = asyncio.run(
                evaluate(
                    dataset, embedder, settings, Path(tmp), cache_dir=cache_dir, progress=lambda m: print(m, flush=True)
                )
            )
        finally:
            embedder.close()
    report(dataset, ev, data)
