"""Who may use the explorer, and how a request proves it: the session cookie, or a bearer token for scripts.

The admin token (``MEMPROXY_ADMIN_TOKEN``) opens every tenant. An application's API key opens its own
tenant only (the tenant is the key's HMAC, as on the memory API), unless the proxy has a fixed tenant
(``MEMPROXY_TENANT``), where a key names no tenant and only the admin token is accepted. Without an
admin token the explorer is off and says how to turn it on.

A browser logs in once (:mod:`proxy.ui.session`); its cookie is ``HttpOnly``, ``SameSite=Strict``,
``Secure`` unless the explorer is served over plain HTTP on a loopback name, and prefixed ``__Host-``
when secure. Every form post of a cookie session carries the session's CSRF token.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from proxy.config import Settings
from proxy.identity import credential, is_admin, tenant_for
from proxy.runtime import Runtime

from .session import LOGIN_SECONDS, SESSION_SECONDS, Principal, Signer

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
COOKIE = "memproxy_ui"
LOGIN_COOKIE = "memproxy_ui_login"


class UIError(Exception):
    """An explorer request refused or failed: rendered as a page with ``status`` and ``message``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Disabled(UIError):
    """No admin token is configured: the explorer serves only the page that says how to enable it."""

    def __init__(self) -> None:
        super().__init__(503, "The memory explorer is off: set MEMPROXY_ADMIN_TOKEN to enable it.")


class LoginRequired(UIError):
    """No valid session or bearer token: a browser is sent to the login form, a script gets a 401."""

    def __init__(self) -> None:
        super().__init__(401, "Log in with the admin token.", headers={"WWW-Authenticate": 'Bearer realm="memproxy"'})


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def signer(request: Request) -> Signer:
    runtime = runtime_of(request)
    token = runtime.settings.admin_token
    if token is None:
        raise Disabled()
    return Signer(runtime.secret, token.get_secret_value())


def secure(request: Request) -> bool:
    """Whether cookies get ``Secure``: always, but on plain HTTP to a loopback name (a local browser)."""
    return not (request.url.scheme == "http" and (request.url.hostname or "") in LOOPBACK)


def cookie_name(request: Request, base: str = COOKIE) -> str:
    return f"__Host-{base}" if secure(request) else base


def key_tenant(token: str, settings: Settings, secret: bytes) -> str | None:
    """The tenant an application's API key opens, or None when a key names no tenant (a fixed tenant)."""
    if settings.tenant or not token:
        return None
    return tenant_for(Headers({"authorization": f"Bearer {token}"}), settings, secret)


def principal(request: Request) -> Principal:
    """Who is asking, from the bearer token or the session cookie; :class:`LoginRequired` otherwise."""
    sign = signer(request)
    runtime = runtime_of(request)
    if request.headers.get("authorization") or request.headers.get("api-key"):
        if is_admin(request.headers, runtime.settings):
            return Principal(None, bearer=True)
        tenant = key_tenant(credential(request.headers) or "", runtime.settings, runtime.secret)
        if tenant is None:
            raise LoginRequired()
        return Principal(tenant, bearer=True)
    found = sign.open(request.cookies.get(cookie_name(request)))
    if found is None:
        raise LoginRequired()
    return found


def tenant_access(request: Request, who: Principal, tenant: str) -> None:
    """403 unless ``who`` may see ``tenant`` (the admin sees every tenant, a key its own)."""
    if not who.may_see(tenant):
        raise UIError(403, "This session may not see that tenant.")


def admin_only(who: Principal) -> None:
    if not who.admin:
        raise UIError(403, "Only the admin token may see this page.")


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """Every cookie the explorer sets: HttpOnly, SameSite=Strict, Secure unless plain HTTP to loopback."""
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=secure(request), httponly=True, samesite="strict"
    )


def set_session(request: Request, response: Response, value: str) -> None:
    _set_cookie(request, response, cookie_name(request), value, SESSION_SECONDS)
    response.delete_cookie(cookie_name(request, LOGIN_COOKIE), path="/", secure=secure(request))


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(cookie_name(request), path="/", secure=secure(request), httponly=True, samesite="strict")


def set_login_nonce(request: Request, response: Response, nonce: str) -> None:
    _set_cookie(request, response, cookie_name(request, LOGIN_COOKIE), nonce, LOGIN_SECONDS)


def login_nonce(request: Request) -> str | None:
    return request.cookies.get(cookie_name(request, LOGIN_COOKIE))
