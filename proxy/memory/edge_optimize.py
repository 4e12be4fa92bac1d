"""The child process that optimizes a closed Qdrant Edge shard: ``python -m proxy.memory.edge_optimize PATH``.

``EdgeShard.optimize()`` holds Python's GIL until it returns (seconds to tens of seconds on a large
store: the HNSW build), so in the proxy's own process it would stop every thread, the event loop
included. :meth:`proxy.memory.store_edge.EdgeStore.optimize_apart` closes the shard and runs this
instead: it opens the shard with the configuration stored on disk, optimizes, flushes, closes, and
prints one JSON line saying what it found and did. Imports Qdrant Edge alone, so it starts quickly,
and runs at a lower CPU priority (``NICENESS``): the build uses every core, the proxy's requests first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import qdrant_edge as qe

NICENESS = 10
"""Added to the child's nice value: the proxy's own work goes first on a busy machine."""


@dataclass(frozen=True)
class IndexState:
    """What ``shard.info()`` says about a shard's index (a few counters: microseconds)."""

    points: int
    segments: int
    indexed: int
    """Vectors in an index: every sparse vector, and the dense ones of segments with an HNSW index.

    Each point written or rewritten lands in a plain segment and adds one (its sparse vector): a new
    point, and an indexed one whose payload changed (Edge moves it out, copy on write, and its old
    copy keeps counting until the next optimize). So the growth of this count since the last optimize
    is the points a recall now scans."""

    @classmethod
    def of(cls, info: qe.ShardInfo) -> IndexState:
        return cls(points=info.points_count, segments=info.segments_count, indexed=info.indexed_vectors_count)

    @property
    def unindexed(self) -> int:
        """Points whose dense vector is in no HNSW index, at least (every point has a dense and a sparse
        vector; a point deleted or moved out of an indexed segment still counts there, hiding others)."""
        return max(0, 2 * self.points - self.indexed)


def optimize(path: str) -> dict[str, Any]:
    started = time.perf_counter()
    shard = qe.EdgeShard.load(path)
    try:
        before = IndexState.of(shard.info())
        changed = shard.optimize()
        after = IndexState.of(shard.info())
        shard.flush()
    finally:
        shard.close()
    return {
        "changed": changed,
        "before": asdict(before),
        "after": asdict(after),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m proxy.memory.edge_optimize SHARD_DIRECTORY")
    os.nice(NICENESS)
    print(json.dumps(optimize(sys.argv[1])), flush=True)


if __name__ == "__main__":
    main()
