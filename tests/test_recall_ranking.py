"""Recall's ranking: identical inputs give identical rankings, whatever order the store holds them in."""

from __future__ import annotations

from datetime import timedelta

from conftest import owner
from test_memory_service import SUB, T0, TEN, make_service  # noqa: F401  (make_service is a fixture)

from proxy.memory.models import Memory
from proxy.memory.service import MemoryService

TIED = ["User drinks green tea every morning"] * 4 + ["User drinks black coffee at work"] * 2
OTHERS = ["User lives in Lisbon", "User has a cat called Miso"]


def _memories() -> list[Memory]:
    scope = owner(TEN, SUB)
    return [
        Memory(
            id=f"00000000-0000-4000-8000-{i:012d}",
            tenant=scope.tenant,
            subject=scope.subject,
            text=text,
            created_at=T0 - timedelta(days=i % 3),  # equal dates too: the id settles those
            updated_at=T0,
        )
        for i, text in enumerate(TIED + OTHERS)
    ]


async def _load(svc: MemoryService, memories: list[Memory]) -> None:
    await svc.store.upsert(owner(TEN, SUB), [await svc._point(m, None) for m in memories])


async def test_equal_scores_rank_the_same_whatever_the_store_order(make_service):  # noqa: F811
    """Memories with equal fused scores (same text here) come back in one order: newer first, then by
    id. Before the tie-break the backend's insertion order decided, so two replicas (or two runs) of
    the same data disagreed."""
    memories = _memories()
    forward, backward = await make_service(), await make_service()
    await _load(forward, memories)
    await _load(backward, memories[::-1])
    query = "What do I drink?"
    first = await forward.of(owner(TEN, SUB)).recall(query, top_k=8, min_confidence=0, min_similarity=0)
    second = await backward.of(owner(TEN, SUB)).recall(query, top_k=8, min_confidence=0, min_similarity=0)
    ids = [s.memory.id for s in first]
    assert ids == [s.memory.id for s in second]
    tea = [s.memory for s in first if s.memory.text == TIED[0]]
    assert len(tea) == 4
    assert [(-m.created_at.timestamp(), m.id) for m in tea] == sorted((-m.created_at.timestamp(), m.id) for m in tea)
    again = await forward.of(owner(TEN, SUB)).recall(query, top_k=8, min_confidence=0, min_similarity=0)
    assert [s.memory.id for s in again] == ids
