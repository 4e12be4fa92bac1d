"""How the explorer answers: Jinja2 templates (autoescaped), security headers, and errors as pages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from proxy.memory.embed import EmbeddingError
from proxy.memory.service import MemoryNotFound
from proxy.memory.store import StoreError
from proxy.runtime import MemoryUnavailable

from .access import Disabled, LoginRequired, UIError, principal, signer
from .forms import read_form
from .links import tenant_url, user_url
from .session import Principal

log = logging.getLogger("memproxy.ui")

HERE = Path(__file__).parent
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # user ids travel in the explorer's URLs: never to another site
    "Cache-Control": "no-store",
}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _url(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


environment = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters["when"] = _when
environment.filters["seg"] = lambda value: quote(str(value), safe="")
environment.globals.update(url=_url, tenant_url=tenant_url, user_url=user_url)
templates = Jinja2Templates(env=environment)


def page(request: Request, name: str, status: int = 200, who: Principal | None = None, **context: Any) -> Response:
    """``name`` rendered with ``context``, the session's CSRF token and the security headers."""
    csrf = signer(request).csrf(who) if who is not None and not who.bearer else ""
    context = {"who": who, "csrf": csrf, "request": request, **context}
    return templates.TemplateResponse(request, name, context, status_code=status, headers=HEADERS)


T = TypeVar("T")


def app_owned(request: Request, name: str, make: Callable[[], T]) -> T:
    """The app's one ``name`` object (kept on its state), made by ``make`` the first time it is asked for."""
    state = request.app.state
    found: T | None = getattr(state, name, None)
    if found is None:
        found = make()
        setattr(state, name, found)
    return found


def redirect(location: str) -> Response:
    return RedirectResponse(location, status_code=303, headers=HEADERS)


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") and not request.headers.get("authorization")


Handler = Callable[[Request, Principal], Awaitable[Response]]


def _failure(request: Request, exc: Exception) -> UIError:
    if isinstance(exc, UIError):
        return exc
    if isinstance(exc, MemoryNotFound):
        return UIError(404, "No such memory for this user (deleted, expired or never theirs).")
    if isinstance(exc, MemoryUnavailable):
        return UIError(503, "The memory layer is unavailable now; /readyz says why.")
    log.warning("explorer: the memory layer failed on %s: %s", request.url.path, type(exc).__name__)
    return UIError(503, f"The memory layer failed ({type(exc).__name__}): reload to see what was done.")


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Resolve the principal, run ``handler``; refusals and memory-layer failures become pages."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        who: Principal | None = None
        try:
            who = principal(request)
            return await handler(request, who)
        except Disabled:
            return page(request, "disabled.html", 503)
        except LoginRequired as exc:
            if wants_html(request):
                return redirect(_url("/ui/login", next=_next_of(request)))
            failure: UIError = exc
        except (UIError, MemoryNotFound, MemoryUnavailable, EmbeddingError, StoreError) as exc:
            failure = _failure(request, exc)
        response = page(request, "error.html", failure.status, who=who, message=failure.message, code=failure.status)
        response.headers.update(failure.headers)
        return response

    return wrapped


def _next_of(request: Request) -> str:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return path if request.method == "GET" else "/ui/"


def safe_next(value: str | None) -> str:
    """Where to go after login: a path of the explorer only (never another site)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


async def posted(request: Request, who: Principal) -> dict[str, str]:
    """A form post's fields, once its CSRF token is checked (a bearer script sends none: no cookie, no CSRF)."""
    limit = request.app.state.runtime.settings.memory_max_body_bytes
    form = await read_form(request, limit)
    if not who.bearer and not signer(request).check_csrf(who, form.get("csrf")):
        raise UIError(403, "This form's CSRF token is missing or wrong: reload the page and try again.")
    return form
