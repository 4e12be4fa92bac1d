"""The child process that optimizes a closed Qdrant Edge shard: ``python -m proxy.memory.edge_optimize PATH``.

``EdgeShard.optimize()`` holds Python's GIL until it returns (seconds to tens of seconds on a large
store: the HNSW build), so in the proxy's own process it would stop every thread, the event loop
included. :meth:`proxy.memory.store_edge.EdgeStore.optimize_apart` closes the shard and runs this
instead: it opens the shard with the configuration stored on disk, optimizes, flushes, closes, and
prints one JSON line saying what it found and did. Imports Qdrant Edge alone, so it starts quickly.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import qdrant_edge as qe


def unindexed(info: qe.ShardInfo) -> int:
    """Points whose dense vector is not in an HNSW index (searched by a plain scan).

    Every memory has a dense and a sparse vector, and the sparse one is always indexed, so
    ``indexed_vectors_count`` is twice the points once every dense vector is in an HNSW index. A point
    deleted from an indexed segment keeps its two vectors there until a vacuum: each one hides two.
    """
    return max(0, 2 * info.points_count - info.indexed_vectors_count)


def describe(info: qe.ShardInfo) -> dict[str, int]:
    return {"points": info.points_count, "segments": info.segments_count, "unindexed": unindexed(info)}


def optimize(path: str) -> dict[str, Any]:
    started = time.perf_counter()
    shard = qe.EdgeShard.load(path)
    try:
        before = describe(shard.info())
        changed = shard.optimize()
        after = describe(shard.info())
        shard.flush()
    finally:
        shard.close()
    return {"changed": changed, "before": before, "after": after, "seconds": time.perf_counter() - started}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m proxy.memory.edge_optimize SHARD_DIRECTORY")
    print(json.dumps(optimize(sys.argv[1])), flush=True)


if __name__ == "__main__":
    main()
