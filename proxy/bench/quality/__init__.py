"""``memproxy bench quality``: does the proxy inject the memories a question needs, and only a few?

Six users' memories, written as the extraction worker writes them (facts questions need, and
distractors), stored through the real service with the real embedder; 66 questions that paraphrase a
fact, imply a constraint or preference they never name (diet, allergies, health, accessibility,
travel, how to answer), or combine two facts. Each is asked through the proxy's own path (recall with
the configured settings, then the block within the configured token budget), and we count the share
of intended facts in the block and the memories per request.

Modules, in the order data flows: ``data`` (the users and questions), ``evaluate`` (stored, asked,
measured), ``report`` (the table and :func:`run`, the command).
"""

from proxy.bench.quality.report import run

__all__ = ["run"]
