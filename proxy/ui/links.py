"""The explorer's URLs, built in one place: tenants are path segments, user ids travel as query values."""

from __future__ import annotations

from urllib.parse import quote, urlencode


def tenant_url(tenant: str, page: str = "") -> str:
    return f"/ui/t/{quote(tenant, safe='')}{page}"


def user_url(tenant: str, subject: str, page: str = "/user", **params: str) -> str:
    query = urlencode({"id": subject, **{k: v for k, v in params.items() if v}})
    return f"{tenant_url(tenant, page)}?{query}"
