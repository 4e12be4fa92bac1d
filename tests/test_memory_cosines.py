"""The recall path's vectorized cosine gives what the per-candidate one gives."""

from __future__ import annotations

import numpy as np
import pytest

from proxy.memory.scoring import cosine, cosines


def test_cosines_match_cosine_one_by_one_and_missing_vectors_score_zero():
    rng = np.random.default_rng(3)
    query = rng.normal(size=384).tolist()
    vectors = [rng.normal(size=384).tolist() for _ in range(5)]
    vectors[2] = (-np.asarray(query)).tolist()  # opposite: -1
    with_gaps = [vectors[0], None, vectors[1], [], vectors[2], [0.0] * 384, vectors[3]]
    got = cosines(query, with_gaps)
    expected = [cosine(query, v) if v else 0.0 for v in with_gaps]
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[1] == got[3] == got[5] == 0.0 and got[4] == pytest.approx(-1.0, abs=1e-6)
    assert cosines(query, []) == [] and cosines(query, [None]) == [0.0]
