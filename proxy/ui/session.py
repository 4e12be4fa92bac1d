"""The explorer's session: a signed, expiring cookie naming who logged in, and the CSRF token bound to it.

Nothing secret is in the cookie: ``{"who": "admin"}`` or ``{"who": "tenant", "tenant": "t_..."}``
(a tenant is already an HMAC, never the key that made it), an expiry and a random nonce, signed with
HMAC-SHA256 under a key derived from the server secret *and the admin token*: rotating either ends
every session. Every comparison is constant-time. A form's CSRF token is an HMAC of the session's
nonce, so it is worth nothing without the session cookie (which ``SameSite=Strict`` keeps on this site).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

SESSION_SECONDS = 8 * 3600
"""A session ends this long after its login."""
LOGIN_SECONDS = 600
"""The login form's own CSRF token is good this long."""
MAX_COOKIE_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is looking: the admin (every tenant) or one tenant (the application whose key logged in)."""

    tenant: str | None = None
    nonce: str = ""
    bearer: bool = False
    """Authenticated by its ``Authorization`` header (a script): no ambient cookie, so no CSRF token needed."""

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def may_see(self, tenant: str) -> bool:
        return self.tenant is None or hmac.compare_digest(self.tenant.encode(), tenant.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks sessions and CSRF tokens under a key of this server secret and admin token."""

    def __init__(self, secret: bytes, admin_token: str) -> None:
        material = hmac.new(secret, b"memproxy ui session v1", hashlib.sha256).digest()
        self._key = hmac.new(material, admin_token.encode(), hashlib.sha256).digest()

    def _mac(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}\x1f{value}".encode(), hashlib.sha256).digest())

    def issue(self, tenant: str | None, *, now: float | None = None) -> str:
        """A session cookie's value for the admin (``tenant`` None) or one tenant."""
        body = {"tenant": tenant, "exp": int((now or time.time()) + SESSION_SECONDS), "nonce": secrets.token_hex(16)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac('session', payload)}"

    def open(self, value: str | None, *, now: float | None = None) -> Principal | None:
        """The principal of a cookie value, or None when it is absent, forged, altered or expired."""
        if not value or len(value) > MAX_COOKIE_CHARS or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", payload).encode()):
            return None
        try:
            body = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("exp"), int) or body["exp"] <= (now or time.time()):
            return None
        tenant = body.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            return None
        return Principal(tenant, str(body.get("nonce", "")))

    def csrf(self, principal: Principal) -> str:
        """The CSRF token every form of this session carries."""
        return self._mac("csrf", principal.nonce)

    def check_csrf(self, principal: Principal, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest((token or "").encode(), self.csrf(principal).encode())

    # --- the login form, before any session: a nonce cookie and its MAC in the form ----------------

    def login_nonce(self, *, now: float | None = None) -> str:
        return f"{int(now or time.time())}-{secrets.token_hex(16)}"

    def login_token(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def check_login(self, nonce: str | None, token: str | None, *, now: float | None = None) -> bool:
        if not nonce or not token or len(nonce) > 64:
            return False
        issued, _, _ = nonce.partition("-")
        if not issued.isdigit() or int(issued) + LOGIN_SECONDS < (now or time.time()):
            return False
        return hmac.compare_digest(token.encode(), self.login_token(nonce).encode())
