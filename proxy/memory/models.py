"""Typed records of the memory layer: what is stored (``Memory``) and what recall returns (``ScoredMemory``).

All datetimes are timezone-aware UTC. Naive datetimes given to these models are taken as UTC, so a
caller can never store a local wall-clock time by accident.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Kinds the extractor assigns (its prompt defines each) and the API documents. Other lowercase
#: identifiers are accepted too (a deployment may add its own; memories of kind ``identity``, which
#: ``profile`` replaced, keep it). A kind sets the default TTL (``Settings.memory_ttl_days``).
KNOWN_KINDS = ("fact", "profile", "preference", "constraint", "plan", "temporary")

#: Kinds an extraction model may answer that mean a known one.
KIND_ALIASES = {"identity": "profile"}

#: What ``MemoryService.remember`` did with a text.
RememberAction = Literal["created", "duplicate", "near_duplicate"]

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SPACE_RE = re.compile(r"\s+")


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"kind must be a lowercase identifier (e.g. {', '.join(KNOWN_KINDS)}), got {kind!r}")
    return kind


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def has_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a memory expiring at ``expires_at`` (None: never) has expired at ``now``."""
    return expires_at is not None and expires_at <= as_utc(now)


def last_touched(updated_at: datetime | None, last_accessed_at: datetime | None) -> datetime | None:
    """The later of a memory's last change and its last recall: what recency is measured from."""
    if last_accessed_at is not None and (updated_at is None or last_accessed_at > updated_at):
        return last_accessed_at
    return updated_at


def normalize_text(text: str) -> str:
    """The form two texts are compared in for exact dedupe: NFKC, case-folded, whitespace collapsed,
    trailing sentence punctuation dropped ("I like tea." == "i like  tea")."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE_RE.sub(" ", folded).strip().rstrip(".!?;,: ").strip()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return as_utc(value) if isinstance(value, datetime) else value


class Source(_Model):
    """Where a memory came from, so a user can trace it back to a conversation."""

    thread_id: str | None = None
    run_id: str | None = None
    message_ids: list[str] = Field(default_factory=list)
    assistant_id: str | None = None


class HistoryEntry(_Model):
    """A previous text of a memory, kept when the memory is updated."""

    text: str
    changed_at: datetime
    reason: str | None = None


class Memory(_Model):
    """One remembered statement about a subject (a user) inside a tenant (an application)."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    tenant: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    text: str = Field(min_length=1)
    kind: str = "fact"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    access_count: int = Field(0, ge=0)
    last_accessed_at: datetime | None = None
    source: Source = Field(default_factory=Source)
    assistant_id: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    deleted_at: datetime | None = None
    deleted_reason: str | None = None

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return str(uuid.UUID(str(value)))

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        return check_kind(value)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def is_expired(self, now: datetime) -> bool:
        return has_expired(self.expires_at, now)

    @property
    def last_touched_at(self) -> datetime:
        """The later of the last change and the last recall: what recency is measured from."""
        return last_touched(self.updated_at, self.last_accessed_at) or self.updated_at


class ConfidenceTerms(_Model):
    """Why a memory surfaced. Every term is in [0, 1]; ``confidence`` is their weighted mean.

    - ``similarity``: how well the memory matches the query, ``max(semantic, lexical)``.
    - ``semantic``: cosine similarity of the query and memory embeddings, clipped at 0.
    - ``lexical``: IDF-weighted share of the query's BM25 terms (stemmed, no stop words) in the memory.
    - ``recency``: ``0.5 ** (age / half_life)``, age measured from the last update or recall.
    - ``frequency``: ``log1p(access_count) / log1p(cap)``, capped at 1.
    """

    confidence: float
    similarity: float
    semantic: float
    lexical: float
    recency: float
    frequency: float


class ScoredMemory(ConfidenceTerms):
    """A recalled memory with its confidence and the terms that make it up."""

    memory: Memory
    rank: int = Field(description="Position in the hybrid (dense + BM25, RRF-fused) candidate list, from 0.")

    @classmethod
    def from_terms(cls, memory: Memory, terms: ConfidenceTerms, rank: int) -> ScoredMemory:
        return cls(memory=memory, rank=rank, **terms.model_dump())
