"""The memory explorer at ``/ui``: server-rendered pages over the memory layer, for operators.

Routes only; each module has one job: :mod:`.session` (signed cookie, CSRF), :mod:`.access` (who may
look), :mod:`.forms` (bounded form posts), :mod:`.web` (templates, headers, errors as pages),
:mod:`.memory_views` (browse and query), :mod:`.action_views` (edit, delete, erase),
:mod:`.ops_views` (audit log, live charts), :mod:`.charts` (sampling and SVG), :mod:`.auth_views`.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from . import action_views, auth_views, memory_views, ops_views


def ui_routes() -> list[BaseRoute]:
    tenant = "/t/{tenant}"
    return [
        Mount(
            "/ui",
            routes=[
                Route("/", auth_views.home, methods=["GET"]),
                Route("/login", auth_views.login_page, methods=["GET"]),
                Route("/login", auth_views.login, methods=["POST"]),
                Route("/logout", auth_views.logout, methods=["POST"]),
                Route("/tenants", memory_views.tenants_page, methods=["GET"]),
                Route("/open", memory_views.open_tenant, methods=["GET"]),
                Route("/metrics", ops_views.metrics_page, methods=["GET"]),
                Route("/metrics/charts", ops_views.charts_fragment, methods=["GET"]),
                Route(tenant, memory_views.users_page, methods=["GET"]),
                Route(tenant + "/open", memory_views.open_user, methods=["GET"]),
                Route(tenant + "/user", memory_views.user_page, methods=["GET"]),
                Route(tenant + "/user/memory", memory_views.memory_detail, methods=["GET"]),
                Route(tenant + "/user/memory/edit", action_views.edit, methods=["POST"]),
                Route(tenant + "/user/memory/delete", action_views.delete, methods=["POST"]),
                Route(tenant + "/user/erase", action_views.erase_form, methods=["GET"]),
                Route(tenant + "/user/erase", action_views.erase, methods=["POST"]),
                Route(tenant + "/audit", ops_views.audit_page, methods=["GET"]),
                Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="ui-static"),
            ],
        )
    ]
