"""What the explorer changes: edit a memory (text, kind, expiry), delete it, erase a user.

Each goes through the same calls as the memory API: ``OwnerMemory.update`` (history kept),
``OwnerMemory.amend`` (kind, expiry), ``OwnerMemory.delete`` (a tombstone with its reason) and
:func:`proxy.erasure.erase_subject` (hard, audited). Inputs have the memory API's bounds. Erasure
takes the user id typed again, and then shows its audit entry.
"""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from proxy import erasure
from proxy.api import MAX_REASON_CHARS, MAX_TTL_SECONDS, MIN_TTL_SECONDS
from proxy.memory.models import check_kind
from proxy.ownership import credential_headers

from .access import UIError, runtime_of
from .links import tenant_url, user_url
from .memory_views import embed_key, memory_page, owner_of
from .session import Principal
from .web import guarded, page, posted, redirect


class Invalid(UIError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def _reason(form: dict[str, str], default: str) -> str:
    reason = form.get("reason", "").strip() or default
    if len(reason) > MAX_REASON_CHARS:
        raise Invalid(f"The reason is longer than {MAX_REASON_CHARS} characters.")
    return reason


def _ttl(form: dict[str, str]) -> tuple[timedelta | None, bool]:
    """The expiry asked for: (a TTL, never expires); (None, False) keeps the memory's expiry."""
    choice = form.get("expiry", "keep")
    if choice == "never":
        return None, True
    if choice != "ttl":
        return None, False
    try:
        seconds = float(form.get("ttl_seconds", ""))
    except ValueError:
        seconds = float("nan")
    if not MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS:  # NaN fails too
        raise Invalid(f"The time to live is a number of seconds from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS:.0f}.")
    return timedelta(seconds=seconds), False


@guarded
async def edit(request: Request, who: Principal) -> Response:
    form = await posted(request, who)
    subject, memory_id = form.get("id"), form.get("memory", "")
    owner, memory = owner_of(request, who, subject)
    limit = runtime_of(request).settings.memory_max_chars
    try:
        text = form.get("text", "")
        if not text.strip():
            raise Invalid("The text must not be blank.")
        if len(text) > limit:
            raise Invalid(f"The text is longer than {limit} characters.")
        kind = form.get("kind", "").strip()
        if len(kind) > 32:
            raise Invalid("The kind is a lowercase identifier of at most 32 characters.")
        try:
            check_kind(kind)
        except ValueError:
            raise Invalid("The kind is a lowercase identifier (letters, digits, _), e.g. fact or preference.") from None
        reason = _reason(form, "edited in the memory explorer")
        ttl, never = _ttl(form)
    except Invalid as exc:
        return await memory_page(request, who, subject, memory_id, status=400, error=exc.message)
    await memory.update(memory_id, text.strip(), reason, api_key=embed_key(request, who))
    await memory.amend(memory_id, kind=kind, ttl=ttl, never_expires=never)
    return redirect(user_url(owner.tenant, owner.subject, "/user/memory", memory=memory_id, saved="1"))


@guarded
async def delete(request: Request, who: Principal) -> Response:
    form = await posted(request, who)
    owner, memory = owner_of(request, who, form.get("id"))
    try:
        reason = _reason(form, "deleted in the memory explorer")
    except Invalid as exc:
        return await memory_page(request, who, form.get("id"), form.get("memory"), status=400, error=exc.message)
    await memory.delete(form.get("memory", ""), reason)
    return redirect(user_url(owner.tenant, owner.subject, notice="deleted"))


@guarded
async def erase_form(request: Request, who: Principal) -> Response:
    owner, memory = owner_of(request, who, request.query_params.get("id"))
    count = await memory.count()
    return page(request, "erase.html", who=who, owner=owner, count=count, error=None)


def upstream_headers(request: Request, who: Principal) -> dict[str, str]:
    """Whose credential deletes the user's upstream threads: a script's own key; for the admin, the
    configured ``MEMPROXY_LLM_API_KEY`` (as on the memory API); a key's session holds no key (partial)."""
    if who.bearer and not who.admin:
        return credential_headers(headers=request.headers)
    key = embed_key(request, who)
    return {"authorization": f"Bearer {key}"} if key else {}


@guarded
async def erase(request: Request, who: Principal) -> Response:
    """GDPR Art. 17 for one user, once the user id is typed again; then its audit entry."""
    form = await posted(request, who)
    owner, memory = owner_of(request, who, form.get("id"))
    if form.get("confirm", "") != owner.subject:
        count = await memory.count()
        error = "The id typed does not match this user's id: nothing was erased."
        return page(request, "erase.html", 400, who=who, owner=owner, count=count, error=error)
    keep = form.get("keep_upstream") == "on"
    report = await erasure.erase_subject(
        runtime_of(request), owner, headers=upstream_headers(request, who), keep_upstream=keep
    )
    return redirect(tenant_url(owner.tenant, f"/audit?entry={report.audit_id}#entry"))
