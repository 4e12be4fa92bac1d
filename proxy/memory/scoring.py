"""Confidence of a recalled memory: similarity, recency and access frequency, each reported.

``confidence = (w_sim * similarity + w_rec * recency + w_freq * frequency) / (w_sim + w_rec + w_freq)``

Dividing by the weights' sum keeps confidence in [0, 1] whatever the operator sets, so a
``min_confidence`` threshold means the same thing under any weighting (the defaults sum to 1).

What "similarity" means here
----------------------------
Retrieval fuses a dense (cosine) and a BM25 candidate list with reciprocal rank fusion. An RRF score
only says where a memory sat in each list: it depends on how many other memories the subject has and
says nothing about whether the best candidate is any good. So RRF decides *which candidates* are
considered, never the reported similarity. Instead, for every candidate:

- ``semantic`` is the true cosine between the query's and the memory's dense embeddings (computed
  from the stored, normalized vector the hybrid query returns), clipped at 0;
- ``lexical`` is the IDF-weighted share of the query's BM25 terms (stemmed, stop words removed)
  present in the memory (:func:`proxy.memory.sparse.lexical_scores`): near 1.0 when the query's
  rare token, such as a product code, occurs in this memory only; near 0 for words every memory
  shares. The IDF is estimated over the candidates themselves, the one place a term's rarity can
  be known without another query;
- ``similarity = max(semantic, lexical)``: a memory is as similar as its strongest honest match, so a
  keyword-only hit is not buried by a mediocre cosine, and a paraphrase needs no shared words.

The cosine is absolute; the lexical share depends on the other candidates only through term
rarity. Both are bounded and comparable across queries and subjects, so a threshold means something.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .models import ConfidenceTerms, as_utc

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class ScoringWeights:
    similarity: float = 0.6
    recency: float = 0.25
    frequency: float = 0.15
    half_life_days: float = 30.0
    frequency_cap: int = 20

    def __post_init__(self) -> None:
        if min(self.similarity, self.recency, self.frequency) < 0:
            raise ValueError("scoring weights must be non-negative")
        if self.similarity + self.recency + self.frequency <= 0:
            raise ValueError("at least one scoring weight must be positive")
        if self.half_life_days <= 0:
            raise ValueError("the recency half-life must be positive")
        if self.frequency_cap < 1:
            raise ValueError("the frequency cap must be at least 1")


def recency_score(age_seconds: float, half_life_seconds: float) -> float:
    """``0.5 ** (age / half_life)``: 1.0 now, 0.5 after one half-life. Negative ages (clock skew) count as 0."""
    score: float = 0.5 ** (max(0.0, age_seconds) / half_life_seconds)  # typeshed: float ** float is Any
    return score


def frequency_score(access_count: int, cap: int) -> float:
    """``log1p(n) / log1p(cap)`` capped at 1: the first recalls count most, ``cap`` recalls saturate."""
    return min(1.0, math.log1p(max(0, access_count)) / math.log1p(cap))


def cosine(query: Sequence[float] | np.ndarray, vector: Sequence[float] | np.ndarray) -> float:
    q = np.asarray(query, dtype=np.float32)
    v = np.asarray(vector, dtype=np.float32)
    denominator = float(np.linalg.norm(q) * np.linalg.norm(v))
    return float(q @ v) / denominator if denominator > 0 else 0.0


def cosines(query: Sequence[float] | np.ndarray, vectors: Sequence[Sequence[float] | None]) -> list[float]:
    """:func:`cosine` of ``query`` with each of ``vectors`` (0.0 for a missing or empty one), in one
    matrix product: the same values, without a conversion and two norms per candidate."""
    present = [i for i, v in enumerate(vectors) if v is not None and len(v) > 0]
    out = [0.0] * len(vectors)
    if not present:
        return out
    q = np.asarray(query, dtype=np.float32)
    matrix = np.asarray([vectors[i] for i in present], dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(q))
    dots = matrix @ q
    for i, dot, norm in zip(present, dots.tolist(), norms.tolist(), strict=True):
        out[i] = dot / norm if norm > 0 else 0.0
    return out


def similarity_score(semantic_cosine: float, lexical: float) -> tuple[float, float, float]:
    """(similarity, semantic, lexical), each in [0, 1]."""
    semantic = min(1.0, max(0.0, semantic_cosine))
    lexical = min(1.0, max(0.0, lexical))
    return max(semantic, lexical), semantic, lexical


def confidence(
    *,
    semantic_cosine: float,
    lexical: float,
    last_touched_at: datetime,
    access_count: int,
    now: datetime,
    weights: ScoringWeights,
) -> ConfidenceTerms:
    similarity, semantic, lexical = similarity_score(semantic_cosine, lexical)
    age = (as_utc(now) - as_utc(last_touched_at)).total_seconds()
    recency = recency_score(age, weights.half_life_days * DAY)
    frequency = frequency_score(access_count, weights.frequency_cap)
    total = weights.similarity + weights.recency + weights.frequency
    value = (weights.similarity * similarity + weights.recency * recency + weights.frequency * frequency) / total
    return ConfidenceTerms(
        confidence=value,
        similarity=similarity,
        semantic=semantic,
        lexical=lexical,
        recency=recency,
        frequency=frequency,
    )


def bm25_scores(query_terms: frozenset[int], documents: Sequence[Mapping[int, float]]) -> list[float]:
    """BM25 of each candidate for the query: its terms' document weights (term frequency, length
    normalized, as stored) times their IDF, counted over the candidates (the collection's IDF is not
    returned by the store; the candidates are what is ranked)."""
    n = len(documents)
    df = {t: sum(1 for d in documents if t in d) for t in query_terms}
    idf = {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items() if f}
    return [sum(w * d[t] for t, w in idf.items() if t in d) for d in documents]


def shared_ranks(scores: Sequence[float], *, places: int = 6) -> list[int]:
    """Competition ranks (0 = best) of ``scores``, higher first; scores equal to ``places`` decimals
    share the best rank of their group, so the order a backend returned them in cannot matter."""
    rounded = [round(s, places) for s in scores]
    ordered = sorted(rounded, reverse=True)
    first: dict[float, int] = {}
    for i, s in enumerate(ordered):
        first.setdefault(s, i)
    return [first[s] for s in rounded]


def fuse(
    dense: Sequence[float],
    lexical: Sequence[float],
    *,
    k: float,
    weights: tuple[float, float] = (1.0, 1.0),
) -> list[float]:
    """Reciprocal rank fusion of the candidates' dense and lexical scores: ``w / (k + rank + 1)`` per
    list, ranks shared by equal scores. A candidate with no lexical match gets nothing from that list."""
    dense_ranks, lexical_ranks = shared_ranks(dense), shared_ranks(lexical)
    return [
        weights[0] / (k + dr + 1) + (weights[1] / (k + lr + 1) if lx > 0 else 0.0)
        for dr, lr, lx in zip(dense_ranks, lexical_ranks, lexical, strict=True)
    ]
