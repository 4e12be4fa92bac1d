"""The data of ``bench locomo``: a LoCoMo-format file read into conversations, turns and questions,
and the memory stored for each turn."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.memory.models import Memory, Source

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
TENANT = "locomo"
SECRET = b"bench"
"""The benchmark's own server secret: owners' pseudonyms only need to be stable within a run."""

_DIA_ID = re.compile(r"^D:?(\d+):(\d+)$")
_DIA_ID_STRICT = re.compile(r"^D\d+:\d+$")
_SESSION = re.compile(r"^session_(\d+)$")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B, %Y", "%d %B %Y")


@dataclass(frozen=True)
class Turn:
    dia_id: str
    session: int
    speaker: str
    text: str
    caption: str | None
    at: datetime

    @property
    def day(self) -> str:
        return f"{self.at.day} {self.at:%B %Y}"

    def _said(self) -> str:
        photo = f" [shares a photo: {self.caption}]" if self.caption else ""
        return f"{self.speaker}: {self.text}{photo}"

    def memory_text(self, before: Turn | None = None) -> str:
        """The memory stored for this turn: its session's day, the speaker, the text, the photo's caption;
        with ``before``, the turn it answers, as context."""
        context = f" (replying to {before._said()})" if before is not None else ""
        return f"[{self.day}] {self._said()}{context}"

    def transcript_line(self) -> str:
        return self._said()


@dataclass(frozen=True)
class Question:
    question: str
    category: int
    evidence: tuple[str, ...]


@dataclass
class Conversation:
    sample_id: str
    turns: list[Turn]
    questions: list[Question]
    session_dates: dict[int, str]  # session number -> the file's date string

    @property
    def last_day(self) -> datetime:
        return max(turn.at for turn in self.turns)

    def transcript(self) -> list[tuple[str, str | None]]:
        """(line, dia_id) in order: a date line opens each session, then one line per turn."""
        lines: list[tuple[str, str | None]] = []
        session = None
        for turn in self.turns:
            if turn.session != session:
                session = turn.session
                lines.append((f"DATE: {self.session_dates.get(session, turn.day)}", None))
            lines.append((turn.transcript_line(), turn.dia_id))
        return lines


@dataclass
class Dataset:
    conversations: list[Conversation]
    notes: list[str] = field(default_factory=list)  # what was repaired or dropped while reading

    @property
    def questions(self) -> int:
        return sum(len(c.questions) for c in self.conversations)

    @property
    def turns(self) -> int:
        return sum(len(c.turns) for c in self.conversations)


def parse_evidence(items: Iterable[object]) -> tuple[list[str], list[str]]:
    """Evidence dia_ids and the parts that are none. Malformed strings are split on ``;``, ``,`` and
    spaces ("D8:6; D9:17" -> D8:6, D9:17); "D:11:26" is read as D11:26."""
    found: list[str] = []
    rejected: list[str] = []
    for item in items:
        for part in re.split(r"[;,\s]+", str(item)):
            if not part:
                continue
            match = _DIA_ID.match(part)
            if match:
                dia_id = f"D{int(match[1])}:{int(match[2])}"
                if dia_id not in found:
                    found.append(dia_id)
            else:
                rejected.append(part)
    return found, rejected


def parse_date(text: str) -> datetime | None:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def load_locomo(path: Path | str) -> Dataset:
    """Read a LoCoMo-format file: a list of samples with ``conversation`` and ``qa`` (see the data README)."""
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, dict):
        raw = [raw]
    dataset = Dataset([])
    for index, sample in enumerate(raw):
        sample_id = str(sample.get("sample_id") or f"sample-{index}")
        turns, dates = _read_turns(sample_id, sample.get("conversation") or {}, dataset.notes)
        known = {turn.dia_id for turn in turns}
        questions: list[Question] = []
        for qa in sample.get("qa") or []:
            question = _read_question(sample_id, qa, known, dataset.notes)
            if question is not None:
                questions.append(question)
        if turns:
            dataset.conversations.append(Conversation(sample_id, turns, questions, dates))
    return dataset


def _read_turns(sample_id: str, conv: dict[str, Any], notes: list[str]) -> tuple[list[Turn], dict[int, str]]:
    """The turns of every session in order, each dated with its session's date (else the previous one's),
    and each session's date as the file writes it."""
    sessions = sorted(
        (int(m[1]), value) for key, value in conv.items() if (m := _SESSION.match(key)) and isinstance(value, list)
    )
    turns: list[Turn] = []
    dates: dict[int, str] = {}
    previous = datetime(2000, 1, 1, tzinfo=UTC)
    for number, items in sessions:
        raw_date = str(conv.get(f"session_{number}_date_time") or "")
        at = parse_date(raw_date) if raw_date else None
        if at is None:
            notes.append(f"{sample_id} session {number}: date {raw_date!r} unreadable, the previous session's used")
            at = previous
        previous = at
        dates[number] = raw_date or at.date().isoformat()
        for item in items:
            text = str(item.get("text") or "").strip()
            if not text or not item.get("dia_id"):
                continue
            ids, _ = parse_evidence([item["dia_id"]])
            dia_id = ids[0] if len(ids) == 1 else str(item["dia_id"])
            caption = str(item.get("blip_caption") or "").strip() or None
            turns.append(Turn(dia_id, number, str(item.get("speaker") or "?"), text, caption, at))
    return turns, dates


def _read_question(sample_id: str, qa: dict[str, Any], known: set[str], notes: list[str]) -> Question | None:
    """A question of categories 1-4 with its evidence repaired and cut to turns of the conversation;
    None (and a note) when no evidence is left."""
    category = qa.get("category")
    if category not in CATEGORIES:
        return None
    raw_evidence = [str(e) for e in qa.get("evidence") or []]
    evidence, rejected = parse_evidence(raw_evidence)
    for item in raw_evidence:
        ids, junk = parse_evidence([item])
        if ids and not junk and not _DIA_ID_STRICT.match(item):
            notes.append(f"{sample_id}: evidence {item!r} read as {', '.join(ids)}")
    unknown = [e for e in evidence if e not in known]
    if rejected or unknown:
        notes.append(
            f"{sample_id}: evidence {qa.get('evidence')!r} -> dropped {rejected + unknown} (not a turn of the conversation)"
        )
    evidence = [e for e in evidence if e in known]
    if not evidence:
        notes.append(f"{sample_id}: question {str(qa.get('question'))[:60]!r} has no usable evidence; skipped")
        return None
    return Question(str(qa.get("question") or ""), int(category), tuple(evidence))


def memories_of(conv: Conversation, *, context: bool = False) -> list[Memory]:
    """The memory of every turn of ``conv``; with ``context``, each holds the turn before it in its session."""
    out = []
    for i, turn in enumerate(conv.turns):
        before = conv.turns[i - 1] if context and i > 0 and conv.turns[i - 1].session == turn.session else None
        out.append(_memory(conv, turn, before))
    return out


def _memory(conv: Conversation, turn: Turn, before: Turn | None = None) -> Memory:
    return Memory(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"locomo/{conv.sample_id}/{turn.dia_id}")),
        tenant=TENANT,
        subject=conv.sample_id,
        text=turn.memory_text(before),
        created_at=turn.at,
        updated_at=turn.at,
        source=Source(thread_id=conv.sample_id, message_ids=[turn.dia_id]),
        metadata={"dia_id": turn.dia_id, "session": turn.session, "session_date": turn.day, "speaker": turn.speaker},
    )
