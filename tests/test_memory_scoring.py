"""Confidence scoring: pure functions, no store or model."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from proxy.memory.scoring import (
    ScoringWeights,
    confidence,
    cosine,
    frequency_score,
    recency_score,
    similarity_score,
)
from proxy.memory.sparse import Bm25Encoder, lexical_scores

NOW = datetime(2025, 6, 1, tzinfo=UTC)
DAY = 86_400.0


def test_recency_halves_every_half_life():
    assert recency_score(0, 30 * DAY) == 1.0
    assert recency_score(30 * DAY, 30 * DAY) == pytest.approx(0.5)
    assert recency_score(90 * DAY, 30 * DAY) == pytest.approx(0.125)
    assert recency_score(-5 * DAY, 30 * DAY) == 1.0  # a clock a little behind never boosts above 1


def test_frequency_is_log_scaled_and_capped():
    assert frequency_score(0, 20) == 0.0
    assert frequency_score(20, 20) == pytest.approx(1.0)
    assert frequency_score(500, 20) == 1.0
    # diminishing returns: the first recalls matter most
    assert frequency_score(1, 20) - frequency_score(0, 20) > frequency_score(11, 20) - frequency_score(10, 20)
    assert frequency_score(3, 20) == pytest.approx(math.log1p(3) / math.log1p(20))


def test_similarity_is_the_stronger_honest_match():
    assert similarity_score(0.42, 1.0) == (1.0, 0.42, 1.0)  # keyword hit with a mediocre cosine
    assert similarity_score(0.8, 0.0) == (0.8, 0.8, 0.0)  # paraphrase, no shared words
    assert similarity_score(-0.3, 0.0) == (0.0, 0.0, 0.0)  # negative cosine clipped
    assert cosine([1, 0], [2, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 3]) == pytest.approx(0.0)
    assert cosine([0, 0], [1, 0]) == 0.0


def test_lexical_credit_goes_to_rare_query_terms():
    bm25 = Bm25Encoder()
    memories = [
        "User ordered part XJ-9000 for the dishwasher",
        "User likes green tea",
        "User likes hiking",
        "User's daughter is called Mia",
        "User likes jazz",
    ]
    terms = [bm25.terms(m) for m in memories]
    code = lexical_scores(bm25.terms("XJ-9000"), terms)
    assert code[0] == pytest.approx(1.0) and code[1:] == [0.0] * 4
    # "user" is in every memory: matching it earns (almost) nothing
    common = lexical_scores(bm25.terms("user"), terms)
    assert max(common) < 0.1
    # "likes" is in three of five: partial credit, less than a unique term
    mixed = lexical_scores(bm25.terms("what does the user like? tea"), terms)
    assert mixed[1] > mixed[2] > 0.0 and mixed[3] < mixed[2]
    assert all(0.0 <= x <= 1.0 for x in mixed)
    assert lexical_scores(bm25.terms("the is a"), terms) == [0.0] * 5  # stop words only
    assert lexical_scores(bm25.terms("tea"), []) == []


def test_confidence_reports_each_term_and_their_weighted_mean():
    w = ScoringWeights(similarity=0.6, recency=0.25, frequency=0.15, half_life_days=10, frequency_cap=20)
    t = confidence(
        semantic_cosine=0.7,
        lexical=0.25,
        last_touched_at=NOW - timedelta(days=10),
        access_count=20,
        now=NOW,
        weights=w,
    )
    assert (t.similarity, t.semantic, t.lexical) == (pytest.approx(0.7), pytest.approx(0.7), 0.25)
    assert t.recency == pytest.approx(0.5) and t.frequency == pytest.approx(1.0)
    assert t.confidence == pytest.approx(0.6 * 0.7 + 0.25 * 0.5 + 0.15 * 1.0)


def test_weights_are_normalized_so_thresholds_keep_their_meaning():
    args = {"semantic_cosine": 0.5, "lexical": 0.0, "last_touched_at": NOW, "access_count": 0, "now": NOW}
    base = confidence(weights=ScoringWeights(0.6, 0.25, 0.15), **args).confidence
    doubled = confidence(weights=ScoringWeights(1.2, 0.5, 0.3), **args).confidence
    assert doubled == pytest.approx(base)
    assert 0.0 <= base <= 1.0


def test_ordering_responds_to_recency_and_frequency():
    w = ScoringWeights()
    fresh = confidence(semantic_cosine=0.6, lexical=0, last_touched_at=NOW, access_count=0, now=NOW, weights=w)
    stale = confidence(
        semantic_cosine=0.65, lexical=0, last_touched_at=NOW - timedelta(days=120), access_count=0, now=NOW, weights=w
    )
    assert fresh.confidence > stale.confidence  # slightly less similar, much more recent
    used = confidence(semantic_cosine=0.6, lexical=0, last_touched_at=NOW, access_count=15, now=NOW, weights=w)
    assert used.confidence > fresh.confidence
    only_sim = ScoringWeights(similarity=1, recency=0, frequency=0)
    a = confidence(semantic_cosine=0.6, lexical=0, last_touched_at=NOW, access_count=15, now=NOW, weights=only_sim)
    b = confidence(
        semantic_cosine=0.65,
        lexical=0,
        last_touched_at=NOW - timedelta(days=120),
        access_count=0,
        now=NOW,
        weights=only_sim,
    )
    assert b.confidence > a.confidence


@pytest.mark.parametrize(
    "kwargs",
    [
        {"similarity": -0.1},
        {"similarity": 0, "recency": 0, "frequency": 0},
        {"half_life_days": 0},
        {"frequency_cap": 0},
    ],
)
def test_invalid_weights_are_refused(kwargs):
    with pytest.raises(ValueError):
        ScoringWeights(**kwargs)
