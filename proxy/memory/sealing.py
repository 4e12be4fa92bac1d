"""Crypto-shredding: every owner's memories are sealed under a data key of their own.

A :class:`Sealer` hands out one :class:`DataKey` per :class:`~proxy.owner.Owner`: 32 random bytes,
created on the owner's first write, stored only wrapped (AES-256-GCM under a key-encryption key
derived with HKDF from the server secret) in a :class:`KeyStore`, keyed by tenant and the owner's
pseudonym, never by a user id. A data key seals a memory's free-form fields into one AES-256-GCM
ciphertext bound to the point (tenant, pseudonym, point id as associated data) and keys its
dedupe hash (HMAC-SHA256). Erasure destroys the wrapped key: whatever copy of a sealed payload
the vector store's files still hold (its write-ahead log, unvacuumed segments) can no longer be
opened by anyone, the operator included.

Unwrapped keys are cached in process memory (bounded, each entry re-read after ``cache_ttl``
seconds so a key destroyed by another replica stops being used) and dropped on erasure; a payload
sealed under a key the cache does not hold (its ``kid`` differs) makes the key be read again once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.errors import MemproxyError
from proxy.owner import Owner

from .models import normalize_text

if TYPE_CHECKING:
    from proxy.state import State

#: State-store namespace of the wrapped data keys: ``<tenant>:<owner pseudonym>`` -> wrapped key.
KEYS_NS = "_memory_keys"
VERSION = "v1"
_NONCE = 12


class SealError(MemproxyError):
    """A sealed payload cannot be opened: its owner's key is gone (erased), or it was altered."""


def _hkdf(material: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(material)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(*parts: str) -> bytes:
    return "\x1f".join(parts).encode()


@dataclass(frozen=True, slots=True)
class DataKey:
    """One owner's data key, unwrapped: seals payload fields and keys the content hash."""

    kid: str
    material: bytes = field(repr=False)
    _aead: AESGCM = field(init=False, repr=False, compare=False)
    _mac: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_aead", AESGCM(_hkdf(self.material, b"memproxy payload v1")))
        object.__setattr__(self, "_mac", _hkdf(self.material, b"memproxy content hash v1"))

    def seal(self, fields: dict[str, Any], aad: bytes) -> str:
        """``fields`` (JSON) as one token: ``v1.<kid>.<nonce + ciphertext>``."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, json.dumps(fields, separators=(",", ":")).encode(), aad)
        return f"{VERSION}.{self.kid}.{_b64(nonce + sealed)}"

    def open(self, token: str, aad: bytes) -> dict[str, Any]:
        """The fields sealed in ``token``; :class:`SealError` if it is not this key's or was altered."""
        version, kid, body = _split(token)
        if version != VERSION or kid != self.kid:
            raise SealError("the payload was sealed under another key")
        raw = _unb64(body)
        try:
            opened = json.loads(self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], aad))
        except InvalidTag:
            raise SealError("the sealed payload does not authenticate (altered, or moved to another point)") from None
        if not isinstance(opened, dict):
            raise SealError("the sealed payload is not an object")
        return opened

    def content_hash(self, text: str) -> str:
        """HMAC-SHA256 of the normalized text under this key: a dedupe key that means nothing without it."""
        return hmac.new(self._mac, normalize_text(text).encode(), hashlib.sha256).hexdigest()


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise SealError("not a sealed payload")
    return parts[0], parts[1], parts[2]


def sealed_kid(token: str) -> str:
    """The id of the key a token was sealed under."""
    return _split(token)[1]


# --- where wrapped keys live ---------------------------------------------------------------------------


class KeyStore(ABC):
    """Wrapped data keys by ``(tenant, owner pseudonym)``; the values are opaque JSON objects."""

    @abstractmethod
    async def get(self, tenant: str, owner_hash: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def add(self, tenant: str, owner_hash: str, record: dict[str, Any]) -> bool:
        """Store ``record`` unless a key is already there (atomic); True if stored."""

    @abstractmethod
    async def delete(self, tenant: str, owner_hash: str) -> bool: ...


class StateKeyStore(KeyStore):
    """Wrapped keys in the state store (SQLite or Redis), namespace :data:`KEYS_NS`."""

    def __init__(self, state: Callable[[], State]) -> None:
        self._state = state

    @property
    def state(self) -> State:
        """The state store as it is now (it may open after the memory layer, or be replaced)."""
        return self._state()

    @staticmethod
    def _key(tenant: str, owner_hash: str) -> str:
        return f"{tenant}:{owner_hash}"

    async def get(self, tenant: str, owner_hash: str) -> dict[str, Any] | None:
        found = await self.state.get(KEYS_NS, self._key(tenant, owner_hash))
        return found if isinstance(found, dict) else None

    async def add(self, tenant: str, owner_hash: str, record: dict[str, Any]) -> bool:
        return await self.state.set_new(KEYS_NS, self._key(tenant, owner_hash), record)

    async def delete(self, tenant: str, owner_hash: str) -> bool:
        return await self.state.delete(KEYS_NS, self._key(tenant, owner_hash))


class MemoryKeyStore(KeyStore):
    """Wrapped keys in a dict: tests and benchmarks whose data dies with the process."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}

    async def get(self, tenant: str, owner_hash: str) -> dict[str, Any] | None:
        return self.records.get((tenant, owner_hash))

    async def add(self, tenant: str, owner_hash: str, record: dict[str, Any]) -> bool:
        if (tenant, owner_hash) in self.records:
            return False
        self.records[(tenant, owner_hash)] = record
        return True

    async def delete(self, tenant: str, owner_hash: str) -> bool:
        return self.records.pop((tenant, owner_hash), None) is not None


# --- the sealer ------------------------------------------------------------------------------------------


class Sealer:
    """Data keys of owners: created on first write, wrapped at rest, cached unwrapped, destroyed on erasure."""

    def __init__(
        self,
        keys: KeyStore,
        secret: bytes,
        *,
        cache_size: int = 4096,
        cache_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not secret:
            raise ValueError("a sealer needs the server secret")
        self.keys = keys
        self._kek = AESGCM(_hkdf(secret, b"memproxy memory key-encryption key v1", salt=b"memproxy"))
        self._cache: OrderedDict[tuple[str, str], tuple[DataKey, float]] = OrderedDict()
        self.cache_size, self.cache_ttl, self.clock = cache_size, cache_ttl, clock

    @classmethod
    def ephemeral(cls) -> Sealer:
        """Keys in process memory under a random secret: for tests and benchmarks, never the proxy."""
        return cls(MemoryKeyStore(), secrets.token_bytes(32))

    @staticmethod
    def _wrap_aad(tenant: str, owner_hash: str, kid: str) -> bytes:
        return _aad("memproxy key", VERSION, tenant, owner_hash, kid)

    @staticmethod
    def payload_aad(tenant: str, owner_hash: str, point_id: str) -> bytes:
        """What a sealed payload is bound to: its owner and its point (a moved ciphertext fails)."""
        return _aad("memproxy payload", VERSION, tenant, owner_hash, point_id)

    def _unwrap(self, tenant: str, owner_hash: str, record: dict[str, Any]) -> DataKey:
        try:
            kid, raw = str(record["kid"]), _unb64(str(record["wrapped"]))
            material = self._kek.decrypt(raw[:_NONCE], raw[_NONCE:], self._wrap_aad(tenant, owner_hash, kid))
        except (KeyError, ValueError, InvalidTag) as exc:
            raise SealError(
                "an owner's data key cannot be unwrapped: wrong MEMPROXY_SECRET, or the key store was altered"
            ) from exc
        return DataKey(kid, material)

    def _wrap(self, tenant: str, owner_hash: str, key: DataKey) -> dict[str, Any]:
        nonce = os.urandom(_NONCE)
        wrapped = self._kek.encrypt(nonce, key.material, self._wrap_aad(tenant, owner_hash, key.kid))
        return {"v": VERSION, "kid": key.kid, "wrapped": _b64(nonce + wrapped)}

    def _cached(self, ident: tuple[str, str]) -> DataKey | None:
        entry = self._cache.get(ident)
        if entry is None:
            return None
        key, expires = entry
        if expires <= self.clock():
            del self._cache[ident]
            return None
        self._cache.move_to_end(ident)
        return key

    def _remember(self, ident: tuple[str, str], key: DataKey) -> DataKey:
        self._cache[ident] = (key, self.clock() + self.cache_ttl)
        self._cache.move_to_end(ident)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return key

    async def key(self, owner: Owner, *, create: bool = False, kid: str | None = None) -> DataKey | None:
        """The owner's data key (None when it has none and ``create`` is false).

        One key-store read per owner per ``cache_ttl`` at most; ``kid`` names the key a payload
        needs, and a cached key of another id is read again (another replica may have replaced it).
        """
        ident = (owner.tenant, owner.hash)
        cached = self._cached(ident)
        if cached is not None and (kid is None or cached.kid == kid):
            return cached
        record = await self.keys.get(*ident)
        if record is None and create:
            fresh = DataKey(secrets.token_hex(8), secrets.token_bytes(32))
            if await self.keys.add(*ident, self._wrap(*ident, fresh)):
                return self._remember(ident, fresh)
            record = await self.keys.get(*ident)  # another writer created it first: use theirs
        if record is None:
            self._cache.pop(ident, None)
            return None
        return self._remember(ident, self._unwrap(*ident, record))

    async def destroy(self, owner: Owner) -> bool:
        """Forget the owner's key everywhere it is kept: what it sealed can never be opened again."""
        self._cache.pop((owner.tenant, owner.hash), None)
        return await self.keys.delete(owner.tenant, owner.hash)
