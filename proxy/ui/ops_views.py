"""The audit log with its verification, and the live charts."""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy import audit
from proxy.metrics import DEGRADED_CAUSES

from .access import UIError, admin_only, runtime_of
from .charts import Sampler, figure, svg
from .memory_views import tenant_of
from .session import Principal
from .web import app_owned, guarded, page

SHOWN = 100
"""Audit entries one page shows: the newest, or those after ``?after=``."""
BATCH = 500
_ENTRY = re.compile(r"[A-Za-z0-9_-]{1,64}")
POLL_SECONDS = 5


@guarded
async def audit_page(request: Request, who: Principal) -> Response:
    tenant = tenant_of(request, who)
    runtime = runtime_of(request)
    state = runtime.state
    wanted = request.query_params.get("entry")
    if wanted is not None and not _ENTRY.fullmatch(wanted):
        raise UIError(400, "That is not an audit entry id.")
    shown: deque[dict[str, Any]] = deque(maxlen=SHOWN)
    highlighted: dict[str, Any] | None = None
    after: str | None = None
    total = 0
    while True:  # the newest entries are at the end of the log
        batch, more = await audit.entries(state, tenant, limit=BATCH, after=after)
        total += len(batch)
        shown.extend(batch)
        highlighted = highlighted or next((e for e in batch if e.get("id") == wanted), None)
        if not more or not batch:
            break
        after = batch[-1]["id"]
    verdict = await audit.verify(state, tenant, secret=runtime.secret)
    return page(
        request,
        "audit.html",
        who=who,
        tenant=tenant,
        entries=list(reversed(shown)),
        total=total,
        verdict=verdict,
        highlighted=highlighted,
        wanted=wanted,
    )


def sampler(request: Request) -> Sampler:
    return app_owned(request, "ui_sampler", Sampler)


def degraded_causes(request: Request) -> dict[str, int]:
    """Degraded requests since the start, by cause (as ``memproxy_degraded_total`` exports them)."""
    counters = runtime_of(request).counters
    return {cause: counters.get(f"degraded.{cause}", 0) for cause in DEGRADED_CAUSES}


async def _charts(request: Request) -> list[dict[str, Any]]:
    sampling = sampler(request)
    await sampling.sample(request.app.state.metrics, runtime_of(request))
    return [
        {
            "series": s,
            "svg": svg(s),
            "latest": figure(s.latest, s.unit),
            "peak": figure(s.peak, s.unit),
            "samples": len(s.points),
        }
        for s in sampling.series()
    ]


@guarded
async def metrics_page(request: Request, who: Principal) -> Response:
    admin_only(who)
    charts = await _charts(request)
    return page(request, "metrics.html", who=who, charts=charts, causes=degraded_causes(request), poll=POLL_SECONDS)


@guarded
async def charts_fragment(request: Request, who: Principal) -> Response:
    """The charts alone, for the page's poll."""
    admin_only(who)
    charts = await _charts(request)
    return page(request, "_charts.html", who=who, charts=charts, causes=degraded_causes(request))
