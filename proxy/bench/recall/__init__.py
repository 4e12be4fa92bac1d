"""``memproxy bench recall``: how long the recall path takes, and how fast memories go in.

The recall path is what the proxy runs before forwarding a request: embed the query with the real
model, hybrid query (dense + BM25, RRF) filtered to the tenant and subject, confidence scoring,
rendering the block (:func:`proxy.memory.render.render_block`) and rewriting the request body with
it. Each sample is one ``MemoryService.recall`` + ``render_block`` + body rewrite, timed end to end
and per stage, one at a time (c=1), then, with ``--concurrency``, many at once (recalls/s, CPU per
recall, the embedder's batch size); ``--rss`` adds the process's resident memory per cell.

Building 100k memories by embedding 100k texts would take most of the run, so the corpus is
built from a pool of distinct sentences embedded once with the real model: memory i reuses a
pool sentence and its vector plus small deterministic noise, and is bulk-upserted through the
store (not ``remember``). Queries are fresh text embedded per call (query cache off).

Layouts: memories spread over many subjects of one tenant (each recall filters to one subject's
share), and the worst case, every memory in one subject.

Modules, in the order data flows: ``data`` (the sentence pool, the memories made from it, the bulk
load), ``evaluate`` (the stores opened, recall and remember timed per cell), ``report`` (the tables,
the notes, and :func:`run`, the command).
"""

from proxy.bench.recall.data import parse_sizes
from proxy.bench.recall.evaluate import BACKENDS
from proxy.bench.recall.report import run

__all__ = ["BACKENDS", "parse_sizes", "run"]
