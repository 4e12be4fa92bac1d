"""``memproxy bench locomo``: does recall find the turns that answer a question, and do they fit a budget?

Every dialog turn of a LoCoMo-format file is stored as one memory ("[8 May 2023] Caroline: ...",
created and updated at its session's date, one subject per conversation) in the embedded store,
with the real embedder. Each question of categories 1-4 is asked of its conversation's subject
and we measure **evidence recall@k**: the share of the question's evidence turns (``dia_id``)
among the first k memories, averaged over questions, for

- dense only (cosine over the embedder's vectors),
- BM25 only (the store's sparse vectors with the collection's IDF),
- hybrid: dense + BM25 fused by RRF, exactly the store query recall uses (``memory_candidates``
  per retriever),
- the service: :meth:`MemoryService.recall`, hybrid candidates re-ranked by confidence
  (similarity + recency + frequency), with its floors off, and once more with the operator's floors.

And **evidence kept within a token budget**: the block the proxy would inject (``render_block``),
memories in hybrid rank order until the budget, against keeping the last N tokens of the transcript
(oldest-first truncation, what a thread does when it outgrows the context window).

The file is an argument: any file in LoCoMo's format works (see ``data.load_locomo``).

Modules, in the order data flows: ``data`` (the file read into conversations, the memory of each
turn), ``evaluate`` (the store loaded, every question asked, the metrics), ``report`` (the tables,
the notes, and :func:`run`, the command).
"""

from proxy.bench.locomo.report import run

__all__ = ["run"]
