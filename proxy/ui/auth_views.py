"""Logging in and out of the explorer, and its front door."""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import Response

from proxy.identity import memory_api_refusal

from .access import (
    Disabled,
    LoginRequired,
    UIError,
    clear_session,
    key_tenant,
    login_nonce,
    principal,
    runtime_of,
    set_login_nonce,
    set_session,
    signer,
)
from .forms import read_form
from .links import tenant_url
from .session import Principal
from .throttle import LoginThrottle
from .web import app_owned, guarded, page, posted, redirect, safe_next

log = logging.getLogger("memproxy.ui")

MAX_LOGIN_BYTES = 4096


async def login_form(request: Request, *, status: int = 200, error: str | None = None) -> Response:
    try:
        sign = signer(request)
    except Disabled:
        return page(request, "disabled.html", 503)
    nonce = sign.login_nonce()
    runtime = runtime_of(request)
    response = page(
        request,
        "login.html",
        status,
        error=error,
        login_csrf=sign.login_token(nonce),
        next=safe_next(request.query_params.get("next")),
        keys_allowed=not runtime.settings.tenant,
    )
    set_login_nonce(request, response, nonce)
    return response


async def login_page(request: Request) -> Response:
    try:
        principal(request)
    except (LoginRequired, Disabled):
        return await login_form(request)
    return redirect(safe_next(request.query_params.get("next")))


def throttle_of(request: Request) -> LoginThrottle:
    """This app's count of failed logins (made at the first login)."""
    return app_owned(request, "login_throttle", LoginThrottle)


async def login(request: Request) -> Response:
    """Check the login form's CSRF token, then the token typed (constant time); set the session cookie.

    An address that failed :data:`~proxy.ui.throttle.MAX_FAILURES` times within the window waits
    (429, ``Retry-After``) before its next try, whatever it types: a weak admin token cannot be guessed
    at the speed of the network."""
    try:
        sign = signer(request)
    except Disabled:
        return page(request, "disabled.html", 503)
    try:
        form = await read_form(request, MAX_LOGIN_BYTES)
    except UIError as exc:
        return await login_form(request, status=exc.status, error=exc.message)
    if not sign.check_login(login_nonce(request), form.get("login_csrf")):
        return await login_form(request, status=403, error="The login form expired or was not ours: try again.")
    runtime = runtime_of(request)
    throttle, address = throttle_of(request), request.client.host if request.client else "-"
    wait = throttle.retry_after(address)
    if wait:
        runtime.count("ui.login_throttled")
        log.warning("explorer: login refused, too many failed logins from one address")
        error = f"Too many failed logins from this address: try again in {wait} seconds."
        refused = await login_form(request, status=429, error=error)
        refused.headers["retry-after"] = str(wait)
        return refused
    token = form.get("token", "")
    admin = runtime.settings.admin_token
    assert admin is not None  # signer() raised Disabled otherwise
    tenant: str | None = None
    if form.get("as") == "application":
        tenant = key_tenant(token, runtime.settings, runtime.secret)
        if tenant is None or memory_api_refusal(runtime.settings):
            runtime.count("ui.login_refused")
            throttle.failed(address)
            log.warning("explorer: refused an application login (this proxy takes the admin token only)")
            return await login_form(request, status=401, error="This proxy accepts the admin token only.")
    elif not (token and hmac.compare_digest(token.encode(), admin.get_secret_value().encode())):
        runtime.count("ui.login_refused")
        throttle.failed(address)
        log.warning("explorer: refused a login with a wrong admin token")
        return await login_form(request, status=401, error="That is not the admin token.")
    throttle.succeeded(address)
    log.info("explorer: %s logged in", "the admin" if tenant is None else f"tenant {tenant}")
    response = redirect(safe_next(form.get("next")))
    set_session(request, response, sign.issue(tenant))
    return response


@guarded
async def logout(request: Request, who: Principal) -> Response:
    await posted(request, who)
    response = redirect("/ui/login")
    clear_session(request, response)
    return response


@guarded
async def home(request: Request, who: Principal) -> Response:
    """The admin starts at the tenants, a key's session at its own tenant."""
    return redirect("/ui/tenants" if who.tenant is None else tenant_url(who.tenant))
