"""Routes of the Assistants bridge, mounted under /v1 ahead of plain forwarding."""

from __future__ import annotations

from starlette.routing import BaseRoute


def bridge_routes() -> list[BaseRoute]:
    """Placeholder until the engine lands: with no routes, Assistants calls are forwarded."""
    return []
