"""A run as the state store keeps it: the run object the API answers, and what only the engine needs.

Stored as ``{"id", "public", "body", "response_id", "usage", "tool_step", "thread_metadata", "kept"}``.
Records written before :class:`RunRecord` existed are the run object itself with the private
fields under ``_``-prefixed keys (``_body``, ``_response_id``, ...); :meth:`RunRecord.from_stored`
reads both, so runs started by an older replica or before an upgrade carry on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class RunRecord:
    public: dict[str, Any]
    """The ``thread.run`` object (OpenAPI ``RunObject``), answered as it is."""
    body: dict[str, Any]
    """The Responses create body every response of the run shares (input and mode added per call)."""
    response_id: str | None = None
    """The run's current upstream response."""
    usage: dict[str, int] | None = None
    """Usage summed over the run's finished responses (``public["usage"]`` is set when the run ends)."""
    tool_step: str | None = None
    """The ``tool_calls`` step waiting for tool outputs, while ``requires_action``."""
    thread_metadata: dict[str, str] = field(default_factory=dict)
    """The thread's metadata when the run was created (for the after-run hook)."""
    kept: dict[str, Any] = field(default_factory=dict)
    """What the before-run hook kept for the after-run hook (:attr:`proxy.assistants.hooks.RunContext.kept`)."""

    @property
    def id(self) -> str:
        return self.public["id"]

    @property
    def thread_id(self) -> str:
        return self.public["thread_id"]

    @property
    def status(self) -> str:
        return self.public["status"]

    def answer(self) -> dict[str, Any]:
        """The run object as the API answers it, apart from the record (later changes do not reach it)."""
        return dict(self.public)

    def to_stored(self) -> dict[str, Any]:
        """The state store's form (its ``id`` is the run's)."""
        return {"id": self.id, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> RunRecord:
        """A stored run, in today's form or the ``_``-prefixed one written before this class."""
        if "public" not in stored:
            public = {key: value for key, value in stored.items() if not key.startswith("_")}
            stored = {"public": public, **{key[1:]: value for key, value in stored.items() if key.startswith("_")}}
        names = {f.name for f in fields(cls)}
        record = cls(**{key: value for key, value in stored.items() if key in names})
        record.thread_metadata = record.thread_metadata or {}
        record.kept = record.kept or {}
        return record
