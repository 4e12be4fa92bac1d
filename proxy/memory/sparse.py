"""BM25 sparse vectors from ``qdrant_edge.Bm25`` (pure tokenization and hashing, no model download).

Both backends store the same vectors: documents carry term-frequency weights with length
normalization, queries carry weight 1.0 per unique term, and the collection's IDF modifier supplies
the inverse document frequency at search time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import qdrant_edge as qe

from .store import SparseVec

#: Expected length of a memory in tokens, for BM25's length normalization. Memories are one short
#: sentence; Qdrant's default (256) suits documents. Changing it changes stored vectors: keep it fixed.
AVG_LEN = 16.0


class Bm25Encoder:
    def __init__(self, avg_len: float = AVG_LEN) -> None:
        self._model = qe.Bm25(qe.Bm25Config(avg_len=avg_len))

    def document(self, text: str) -> SparseVec:
        vec = self._model.embed_document(text)
        return SparseVec(list(vec.indices), list(vec.values))

    def query(self, text: str) -> SparseVec:
        vec = self._model.embed_query(text)
        return SparseVec(list(vec.indices), list(vec.values))

    def weights(self, text: str) -> dict[int, float]:
        """The text's BM25 document weights by term (what :meth:`document` stores)."""
        vec = self._model.embed_document(text)
        return dict(zip(vec.indices, vec.values, strict=True))

    def terms(self, text: str) -> frozenset[int]:
        """The text's BM25 terms (hashed stems, stop words removed)."""
        return frozenset(self._model.embed_query(text).indices)


def _idf(n_docs: int, doc_freq: int) -> float:
    # BM25's IDF, the form Qdrant's IDF modifier uses: always > 0
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def lexical_scores(query_terms: frozenset[int], candidates: Sequence[frozenset[int]]) -> list[float]:
    """For each candidate memory, the IDF-weighted share of the query's terms it contains, in [0, 1].

    Document frequencies are counted over the candidate set itself (the memories retrieval returned
    for this query): a term every candidate shares ("user", "likes") earns almost nothing, a term
    only this memory has (a product code) earns its full share. Each term is measured against the
    weight it would have if it were unique to one memory, so a memory scores 1.0 only when it holds
    every query term and no other candidate does. With few memories the estimate is coarse (one
    memory alone scores 1.0 for any shared term); with many, the candidates are biased towards the
    query's terms, which makes the estimate conservative, never inflated.
    """
    n = len(candidates)
    if not query_terms or n == 0:
        return [0.0] * n
    df = {t: sum(1 for c in candidates if t in c) for t in query_terms}
    unique = _idf(n, 1)
    weight = {t: _idf(n, max(df[t], 1)) / unique for t in query_terms}
    total = len(query_terms)
    return [min(1.0, sum(weight[t] for t in query_terms & c) / total) for c in candidates]
