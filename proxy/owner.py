"""Whose memories: an :class:`Owner` is one subject (an end user) inside one tenant (an application).

The one value every layer passes where an owner is meant: the memory store filters by it, the state
store indexes entries under it, jobs, parked turns, the ownership register, audit entries, headers
and erasure name it. Its :attr:`Owner.hash` is the one pseudonym of the pair, keyed with the server
secret: it is what leaves the process (``x-memory-subject``, logs, audit entries, state keys), so a
subject id, perhaps an e-mail address, is never spelled out there, and nobody without the secret can
test a guess against it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field


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
