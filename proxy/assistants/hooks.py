"""The seam where memory plugs into runs: extra instructions before, the finished run after.

The engine calls :meth:`RunHooks.before_run` while creating a run (its answer is appended to the
run's instructions) and :meth:`RunHooks.after_run` once when a run reaches a terminal status,
whichever replica notices it first. The default does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunContext:
    """What a hook may need to know about the run being created."""

    tenant: str
    thread_id: str
    thread_metadata: dict[str, str]
    assistant_id: str
    run_metadata: dict[str, str]
    new_messages: list[dict[str, Any]] = field(default_factory=list)
    """The user messages added with this run (``thread.messages`` or ``additional_messages``), as message objects."""
    kept: dict[str, Any] = field(default_factory=dict)
    """What :meth:`RunHooks.before_run` keeps for :meth:`RunHooks.after_run` (JSON, stored with the run record):
    after_run may run on another request, or another replica."""


class RunHooks:
    """No-op hooks; subclass and pass to the engine to act on runs."""

    async def before_run(self, ctx: RunContext) -> str | None:
        """Extra instructions to append to the run's instructions, or None."""
        return None

    async def after_run(self, ctx: RunContext, run: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        """Called once per run that reached a terminal status, with the messages it created."""
        return

    def headers(self) -> dict[str, str]:
        """Headers to add to this request's answer (JSON or stream), e.g. what memory did."""
        return {}
