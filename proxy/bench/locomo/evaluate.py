"""The measurements of ``bench locomo``: every turn stored, every question asked of each retriever and
of the service, the evidence each ranking finds, and what a block or a truncated transcript keeps."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import qdrant_edge as qe

from proxy.bench.locomo.data import CATEGORIES, SECRET, TENANT, Conversation, Dataset, Question, Turn, memories_of
from proxy.bench.membench import BenchService, embed_cached
from proxy.config import Settings
from proxy.memory import store_edge
from proxy.memory.dates import date_cues
from proxy.memory.embed import LocalEmbedder
from proxy.memory.models import Memory, ScoredMemory
from proxy.memory.render import memory_line, render_block
from proxy.memory.sealing import Sealer
from proxy.memory.sparse import Bm25Encoder
from proxy.memory.store import DENSE, RRF_K, SPARSE, FilterSpec, MemoryPoint, SparseVec, build_filter
from proxy.memory.store_edge import EdgeStore
from proxy.memory.tokens import count_tokens
from proxy.owner import Owner

KS = (5, 10, 25)
BUDGETS = (1000, 4000, 8000, 16000)

#: (conversation, turn, its memory) of every turn of the dataset, in order.
Memories = list[tuple[Conversation, Turn, Memory]]


# --- metrics ---------------------------------------------------------------------------------------


def mean(values: Iterable[float]) -> float:
    """The mean, NaN when there is nothing to average."""
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


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
    question: str = ""


def mean_recall(results: Sequence[QuestionResult], ranking: Callable[[QuestionResult], Sequence[str]], k: int) -> float:
    """Macro recall@k: the share of each question's evidence found, averaged over questions."""
    return mean(recall_at(ranking(r), r.evidence, k) for r in results)


def micro_recall(
    results: Sequence[QuestionResult], ranking: Callable[[QuestionResult], Sequence[str]], k: int
) -> float:
    """Micro recall@k: the share of all evidence turns found (a question with many evidence turns
    weighs more)."""
    return micro_kept(results, lambda r: set(ranking(r)[:k]))


def micro_kept(results: Sequence[QuestionResult], kept: Callable[[QuestionResult], set[str]]) -> float:
    """The share of all evidence turns of ``results`` that ``kept`` holds."""
    total = sum(len(r.evidence) for r in results)
    found = sum(1 for r in results for e in r.evidence if e in kept(r))
    return found / total if total else float("nan")


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
            query=cast(qe.Fusion, qe.Fusion.Rrf(k=RRF_K)),  # Rrf is a Fusion; the stub says otherwise
            filter=flt,
            with_payload=False,
            with_vector=False,
        )
    points = await store._call(lambda: store.shard.query(request))
    # equal scores in the backend's internal point order, which changes between runs: by id instead
    return [str(p.id) for p in sorted(points, key=lambda p: (-round(p.score, 6), str(p.id)))]


def _scored(memories: Sequence[Memory]) -> list[ScoredMemory]:
    return [
        ScoredMemory(memory=m, confidence=0, similarity=0, semantic=0, lexical=0, recency=0, frequency=0, rank=i)
        for i, m in enumerate(memories)
    ]


@dataclass
class _Askers:
    """What every question is asked of: the loaded store, the service and its similarity-only twin."""

    store: EdgeStore
    service: BenchService
    similarity_only: BenchService
    embedder: LocalEmbedder
    sparse: Bm25Encoder
    top: int  # every ranking is cut at the largest k
    candidates: int  # per retriever, in the store's hybrid query
    line_chars: int
    budgets: Sequence[int]
    recency_terms: list[float] = field(default_factory=list)  # of every memory the service recalled


@dataclass
class _Thread:
    """One conversation while its questions are asked."""

    conv: Conversation
    scope: Owner
    now: datetime  # the day after its last session
    mine: dict[str, tuple[Turn, Memory]]  # point id -> its turn and memory
    session_of: dict[str, int]  # dia_id -> session
    truncation: dict[int, set[str]]  # budget -> dia_ids left in the truncated transcript
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # point id -> its dense vector

    def dia(self, ids: Iterable[str]) -> list[str]:
        return [self.mine[i][0].dia_id for i in ids]


async def _load(
    store: EdgeStore, sparse: Bm25Encoder, dataset: Dataset, memories: Memories, vectors: np.ndarray
) -> None:
    """Upsert every turn's memory into its conversation's subject, with its vector and BM25 document."""
    for conv in dataset.conversations:
        scope = Owner.of(SECRET, TENANT, conv.sample_id)
        points = [
            MemoryPoint(memory, vectors[i], sparse.document(memory.text))
            for i, (c, _, memory) in enumerate(memories)
            if c is conv
        ]
        for i in range(0, len(points), 256):
            await store.upsert(scope, points[i : i + 256])


def _thread(conv: Conversation, memories: Memories, budgets: Sequence[int], vectors: np.ndarray) -> _Thread:
    scope = Owner.of(SECRET, TENANT, conv.sample_id)
    transcript = conv.transcript()
    mine = {m.id: vectors[i] for i, (c, _, m) in enumerate(memories) if c is conv}
    return _Thread(
        conv,
        scope,
        conv.last_day + timedelta(days=1),
        {m.id: (t, m) for c, t, m in memories if c is conv},
        {t.dia_id: t.session for t in conv.turns},
        {b: truncate_transcript(transcript, b) for b in budgets},
        mine,
    )


def _kept_in_block(
    thread: _Thread, everything: Sequence[Memory], budgets: Sequence[int], line_chars: int
) -> dict[int, set[str]]:
    """Budget -> dia_ids in the block the proxy would inject: the memories in rank order until it is full."""
    kept = {}
    for budget in budgets:
        block = render_block(_scored(everything), budget_tokens=budget, max_chars=line_chars)
        kept[budget] = set(thread.dia(m.id for m in everything[: block.count]))
    return kept


#: The block is the service's first BLOCK_HEAD memories (more than a 4k block holds), then the rest of
#: the conversation in fused order (for the 8k and 16k budgets).
BLOCK_HEAD = 100
#: Pseudo-relevance feedback: the query vector moved towards the mean of the first fused documents.
PRF_DOCS, PRF_WEIGHT = 3, 0.5
#: MMR: relevance (the fused order) against redundancy with what is already chosen.
MMR_LAMBDA, MMR_POOL = 0.7, 50


def _prf(thread: _Thread, dense: Sequence[float], fused: Sequence[str], sparse_ids: list[str], limit: int) -> list[str]:
    """Hybrid ranking again, the dense query moved towards the first :data:`PRF_DOCS` fused memories."""
    ids = list(thread.vectors)
    matrix = np.stack([thread.vectors[i] for i in ids])
    moved = np.asarray(dense, dtype=np.float32) + PRF_WEIGHT * matrix[[ids.index(i) for i in fused[:PRF_DOCS]]].mean(0)
    scores = matrix @ (moved / np.linalg.norm(moved))
    order = sorted(range(len(ids)), key=lambda j: (-round(float(scores[j]), 6), ids[j]))
    return rrf([[ids[j] for j in order], sparse_ids], limit=limit)


def _temporal(thread: _Thread, question: str, ranked: Sequence[str]) -> list[str]:
    """``ranked`` with the memories dated in a month or year the question names moved ahead, in order."""
    cues = date_cues(question)
    return sorted(ranked, key=lambda point_id: not (cues and cues.match(thread.mine[point_id][1].created_at)))


def _mmr(thread: _Thread, ranked: Sequence[str], top: int) -> list[str]:
    """Maximal marginal relevance over the first :data:`MMR_POOL` of ``ranked`` (relevance 1/(1+rank))."""
    pool = list(ranked[:MMR_POOL])
    chosen: list[str] = []
    while pool and len(chosen) < top:

        def gain(item: str) -> float:
            relevance = 1.0 / (1 + ranked.index(item))
            redundancy = max((float(thread.vectors[item] @ thread.vectors[c]) for c in chosen), default=0.0)
            return MMR_LAMBDA * relevance - (1 - MMR_LAMBDA) * redundancy

        best = max(pool, key=gain)
        chosen.append(best)
        pool.remove(best)
    return chosen


async def _ask(askers: _Askers, thread: _Thread, q: Question) -> QuestionResult:
    """One question, asked of every retriever, of the service with and without its floors, and of its
    similarity-only twin; and the blocks of every memory of the conversation in hybrid order."""
    store, service, similarity_only = askers.store, askers.service, askers.similarity_only
    conv, scope, now, top, candidates = thread.conv, thread.scope, thread.now, askers.top, askers.candidates
    size = len(conv.turns)
    dense = await askers.embedder.embed_query(q.question)
    query_sparse = askers.sparse.query(q.question)
    dense_ids = await _ranking(store, scope, dense=dense, limit=size, now=now)
    sparse_ids = await _ranking(store, scope, sparse=query_sparse, limit=size, now=now)
    dense_full, sparse_full = thread.dia(dense_ids), thread.dia(sparse_ids)
    recalled = await service.of(scope).recall(
        q.question, top_k=BLOCK_HEAD, min_confidence=0.0, min_similarity=0.0, now=now
    )  # the head of the block
    askers.recency_terms.extend(s.recency for s in recalled[:top])
    floored = await service.of(scope).recall(q.question, top_k=top, now=now)
    by_similarity = await similarity_only.of(scope).recall(
        q.question, top_k=top, min_confidence=0.0, min_similarity=0.0, now=now
    )
    # the block: what the service ranks, then the rest of the conversation in fused order
    service_ids = [s.memory.id for s in recalled]
    rest = [i for i in rrf([dense_ids, sparse_ids], limit=size) if i not in set(service_ids)]
    everything = [thread.mine[i][1] for i in service_ids + rest]
    return QuestionResult(
        conv.sample_id,
        q.category,
        q.evidence,
        tuple(sorted({thread.session_of[e] for e in q.evidence})),
        {
            "dense": dense_full[:top],
            "bm25": sparse_full[:top],
            "hybrid": thread.dia(rrf([dense_ids, sparse_ids], limit=candidates)[:top]),
            "service": thread.dia(s.memory.id for s in recalled[:top]),
            "prf": thread.dia(
                _prf(thread, dense, rrf([dense_ids, sparse_ids], limit=candidates), sparse_ids, candidates)[:top]
            ),
            "mmr": thread.dia(_mmr(thread, service_ids, top)),
            "temporal": thread.dia(_temporal(thread, q.question, service_ids)[:top]),
            "similarity": thread.dia(s.memory.id for s in by_similarity),
            "service_floors": thread.dia(s.memory.id for s in floored),
        },
        _kept_in_block(thread, everything, askers.budgets, askers.line_chars),
        thread.truncation,
        dense_full,
        sparse_full,
        q.question,
    )


async def _ask_all(
    askers: _Askers,
    dataset: Dataset,
    memories: Memories,
    vectors: np.ndarray,
    say: Callable[[str], None],
    tick: Callable[[], None],
) -> list[QuestionResult]:
    results: list[QuestionResult] = []
    for conv in dataset.conversations:
        say(f"asking {len(conv.questions)} questions of {conv.sample_id} ...")
        thread = _thread(conv, memories, askers.budgets, vectors)
        for q in conv.questions:
            results.append(await _ask(askers, thread, q))
            tick()
    return results


def _line_tokens(memories: Memories, line_chars: int) -> tuple[float, float]:
    """Mean tokens of a turn as a block line and as a transcript line."""
    block = mean(count_tokens(memory_line(item, line_chars) + "\n") for item in _scored([m for _, _, m in memories]))
    transcript = mean(count_tokens(t.transcript_line() + "\n") for _, t, _ in memories)
    return block, transcript


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
    tick: Callable[[], None] = lambda: None,
    context: bool = False,
) -> Evaluation:
    """Every question of ``dataset`` asked of every retriever; ``progress`` hears each stage and ``tick``
    each question answered. With ``context`` each turn's memory holds the turn it answers."""
    say = progress or (lambda _msg: None)
    memories = [
        (conv, turn, memory)
        for conv in dataset.conversations
        for turn, memory in zip(conv.turns, memories_of(conv, context=context), strict=True)
    ]
    say(f"embedding {len(memories)} turns ...")
    vectors, embed_seconds, cached = await embed_cached(embedder, [m.text for _, _, m in memories], cache_dir)
    sparse = Bm25Encoder()
    store = EdgeStore(workdir / "locomo", dim=embedder.dim, sealer=Sealer.ephemeral(), collection="locomo")
    service = BenchService(store, embedder, settings, sparse=sparse, owns_store=True)
    await service.start()
    try:
        started = time.perf_counter()
        await _load(store, sparse, dataset, memories, vectors)
        load_seconds = time.perf_counter() - started

        top = max(ks)
        candidates = max(settings.memory_candidates, top)
        # the same store, ranked by similarity alone: separates what recency does from what re-ranking does
        plain = settings.model_copy(update={"memory_weight_recency": 0.0, "memory_weight_frequency": 0.0})
        similarity_only = BenchService(store, embedder, plain, sparse=sparse)
        askers = _Askers(
            store, service, similarity_only, embedder, sparse, top, candidates, settings.memory_line_chars, budgets
        )
        started = time.perf_counter()
        results = await _ask_all(askers, dataset, memories, vectors, say, tick)
        query_seconds = time.perf_counter() - started
    finally:
        await service.aclose()
    w = service.weights
    block_line_tokens, transcript_line_tokens = _line_tokens(memories, settings.memory_line_chars)
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
        recency_terms=askers.recency_terms,
        block_line_tokens=block_line_tokens,
        transcript_line_tokens=transcript_line_tokens,
    )
