"""``bench recall --rss``: what a filled embedded store costs a process that opens it, as the proxy does on
every start (the loading process's own figure also holds every page the bulk load wrote).

A child process (``python -m proxy.bench.recall.reopen``) reads its resident memory once its imports are
done, opens the store's directory, recalls for a number of subjects, and prints its resident memory at each
step as JSON: the store's share is the difference from the first reading, split into anonymous memory
(the heap: what only a restart gives back) and file pages (memory-mapped segment files, which the kernel can
drop and read again under pressure), and the file pages by the part of the store they hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.bench.harness import memory_mb
from proxy.bench.recall.data import NOW, SECRET, TENANT, Pool, subject_name
from proxy.memory.sealing import MemoryKeyStore, Sealer
from proxy.owner import Owner

#: Candidates per list, as many as the proxy's recall asks for by default.
CANDIDATES = 40
#: The parts of a Qdrant Edge shard, by the name of the file or folder that holds them.
PARTS = {
    "vector_storage-dense": "dense vectors",
    "vector_index-dense": "HNSW graph",
    "payload_storage": "payloads",
    "payload_index": "payload indexes",
    "vector_storage-bm25": "BM25 vectors",
    "vector_index-bm25": "BM25 index",
    "id_tracker": "id tracker",
    "wal": "write-ahead log",
}


@dataclass(frozen=True)
class Reading:
    rss_mb: float
    anon_mb: float
    file_mb: float

    @classmethod
    def now(cls) -> Reading:
        parts = memory_mb(os.getpid())
        return cls(parts["VmRSS"], parts["RssAnon"], parts["RssFile"])

    def minus(self, base: Reading) -> Reading:
        return Reading(self.rss_mb - base.rss_mb, self.anon_mb - base.anon_mb, self.file_mb - base.file_mb)


@dataclass(frozen=True)
class Reopened:
    """The store's share of a fresh process's resident memory: once open, and after ``recalls`` recalls
    (one per subject, the first ``recalls`` subjects)."""

    opened: Reading
    recalled: Reading
    recalls: int
    hits: int  # memories the recalls returned: they read what they should
    parts_mb: dict[str, float]  # resident file pages by part of the store (PARTS), after the recalls


def part_of(relative: str) -> str:
    """Which part of the store (:data:`PARTS`) a file under the store's directory belongs to."""
    for piece in Path(relative).parts:
        for prefix, name in PARTS.items():
            if piece.startswith((prefix, "mutable_" + prefix)):
                return name
    return "other files"


def store_pages_mb(root: Path) -> dict[str, float]:
    """Resident pages of the files under ``root`` mapped by this process, by part (/proc/self/smaps)."""
    prefix, current = str(root.resolve()) + os.sep, None
    found: dict[str, float] = {}
    with Path("/proc/self/smaps").open() as smaps:
        for line in smaps:
            fields = line.split(None, 5)
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's first line: address range ...
                path = fields[5].strip() if len(fields) > 5 else ""
                current = part_of(path[len(prefix) :]) if path.startswith(prefix) else None
            elif current is not None and fields[0] == "Rss:":
                found[current] = found.get(current, 0.0) + int(fields[1]) / 1024
    return found


def bench_sealer() -> Sealer:
    """The sealer of the benchmark's stores: under the benchmark's secret, so that the child, given the
    wrapped keys, opens what the loading process sealed."""
    return Sealer(MemoryKeyStore(), SECRET)


def measure_reopen(path: Path, dim: int, sealer: Sealer, pool: Pool, subjects: int, recalls: int) -> Reopened:
    """Run the child on the (closed) store at ``path``, written under ``sealer`` (:func:`bench_sealer`);
    the questions are pool sentences and their vectors, one per subject."""
    if not isinstance(sealer.keys, MemoryKeyStore):
        raise TypeError("the store must be written under bench_sealer()")
    n = min(recalls, subjects)
    asked = {
        "questions": [[pool.texts[i % len(pool.texts)], pool.vectors[i % len(pool.texts)].tolist()] for i in range(n)],
        "keys": [[tenant, owner, record] for (tenant, owner), record in sealer.keys.records.items()],
        "subjects": subjects,
    }
    file = path.with_name(path.name + "-reopen.json")
    file.write_text(json.dumps(asked))
    command = [sys.executable, "-m", "proxy.bench.recall.reopen", str(path), str(dim), str(file)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    readings = {key: Reading(**value) for key, value in found["readings"].items()}
    base = readings["imported"]
    return Reopened(readings["opened"].minus(base), readings["recalled"].minus(base), n, found["hits"], found["parts"])


async def _child(path: Path, dim: int, asked: dict[str, Any]) -> dict[str, Any]:
    from proxy.memory.sparse import Bm25Encoder
    from proxy.memory.store_edge import EdgeStore

    sealer = bench_sealer()
    for tenant, owner, record in asked["keys"]:
        await sealer.keys.add(tenant, owner, record)
    encoder = Bm25Encoder()
    readings = {"imported": Reading.now()}
    store = EdgeStore(path, dim=dim, sealer=sealer, collection=path.name)
    await store.start()
    hits = 0
    try:
        readings["opened"] = Reading.now()
        for index, (text, vector) in enumerate(asked["questions"]):
            scope = Owner.of(SECRET, TENANT, subject_name(index % asked["subjects"]))
            found = await store.hybrid_query(scope, vector, encoder.query(text), limit=CANDIDATES, now=NOW)
            hits += len(found)
        readings["recalled"] = Reading.now()
        parts = store_pages_mb(path)
    finally:
        await store.close()
    return {"readings": {key: reading.__dict__ for key, reading in readings.items()}, "hits": hits, "parts": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("dim", type=int)
    parser.add_argument("asked", type=Path, help="questions, wrapped keys and subjects (JSON)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_child(args.path, args.dim, json.loads(args.asked.read_text())))))


if __name__ == "__main__":
    main()
