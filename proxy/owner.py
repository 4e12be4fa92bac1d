"""Whose memories: an :class:`Owner` is one subject (an end user) inside one tenant (an application).

The one value every layer passes where an owner is meant: the memory store filters by it, the state
store indexes entries under it, jobs, parked turns, the ownership register, audit entries, headers
and erasure name it. Its :attr:`Owner.hash` is the one pseudonym of the pair, keyed with the server
secret: it is what leaves the process (``x-memory-subject``, logs, audit entries, state keys), so a
subject id, perhaps an e-mail address, is never spelled out there, and nobody without the secret can
test a guess against it.

What may be a subject at all is one rule, :func:`subject_problem`: the memory API refuses to
address anything else, and the hooks give no memory to a request naming anything else, so nothing is
ever stored about a subject the API could not list, export or erase.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

MAX_SUBJECT = 256
"""Longest subject, in characters."""


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be a subject, or None when it can: 1 to :data:`MAX_SUBJECT` characters,
    not blank, no control characters (U+0000-U+001F, U+007F).

    The answer is a short token (``subject-too-long``, ``subject-blank``, ``subject-control-character``)
    fit for a header, a counter and a log line: it never repeats the value.
    """
    if len(subject) > MAX_SUBJECT:
        return "subject-too-long"
    if not subject.strip():
        return "subject-blank"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in subject):
        return "subject-control-character"
    return None


def digest(secret: bytes, *parts: str, length: int = 32) -> str:
    """HMAC-SHA256 of the parts (unit-separated) under the server secret, hex, cut to ``length``."""
    message = "\x1f".join(parts).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:length]


@dataclass(frozen=True, slots=True)
class Owner:
    """One subject inside one tenant, with its keyed pseudonym. Build it with :meth:`of`.

    ``repr`` shows the tenant and the pseudonym only: an owner in a log line never names the user.
    """

    tenant: str
    subject: str = field(repr=False)
    hash: str

    def __post_init__(self) -> None:
        for name in ("tenant", "subject", "hash"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"an owner needs a non-empty {name}")

    @classmethod
    def of(cls, secret: bytes, tenant: str, subject: str) -> Owner:
        """The owner of ``subject`` in ``tenant``, its pseudonym keyed with the server ``secret``."""
        if not (isinstance(tenant, str) and tenant.strip() and isinstance(subject, str) and subject.strip()):
            raise ValueError("an owner needs a non-empty tenant and subject")
        return cls(tenant, subject, "s_" + digest(secret, "subject", tenant, subject, length=20))

    @property
    def legacy_hash(self) -> str:
        """The unkeyed SHA-256 under which wave-1 state entries and jobs were indexed.

        Read (never written) so that erasure still finds what an earlier version stored.
        """
        raw = f"{len(self.tenant)}:{self.tenant}:{self.subject}".encode()
        return hashlib.sha256(raw).hexdigest()[:32]
