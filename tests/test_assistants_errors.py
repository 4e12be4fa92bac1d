"""Errors of the Assistants routes: one OpenAI error type, upstream refusals relayed as they came,
rendered by the same handlers whether the app installed them or the routes call them directly.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import httpx
from starlette.applications import Starlette
from starlette.requests import Request

import proxy.assistants
import proxy.emulator
from proxy.assistants.engine import Engine
from proxy.assistants.errors import ASSISTANTS_EXCEPTION_HANDLERS
from proxy.assistants.routes import assistants_routes
from proxy.assistants.upstream import UpstreamError
from proxy.assistants.validation import not_found
from proxy.errors import EXCEPTION_HANDLERS, MemproxyError, OpenAIError

UPSTREAM_BODY = {"error": {"message": "Slow down.", "type": "requests", "param": None, "code": "rate", "extra": 1}}
FAILURES = {
    "openai": lambda: not_found("thread", "thread_x"),
    "upstream": lambda: UpstreamError(429, UPSTREAM_BODY),
}


async def _answer(app: Starlette, path: str) -> tuple[int, dict]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path)
    return response.status_code, response.json()


def _failing_factory(kind: str):
    async def factory(request: Request) -> Engine:
        raise FAILURES[kind]()

    return factory


def _served(kind: str) -> Starlette:
    routes = assistants_routes(_failing_factory(kind))
    return Starlette(routes=routes, exception_handlers=ASSISTANTS_EXCEPTION_HANDLERS)


async def test_the_envelopes_are_openai_shaped_and_upstream_bodies_relayed_untouched() -> None:
    error = {"message": "No thread found with id 'thread_x'.", "type": "invalid_request_error", "param": None}
    assert await _answer(_served("openai"), "/v1/assistants") == (404, {"error": {**error, "code": None}})
    assert await _answer(_served("upstream"), "/v1/assistants") == (429, UPSTREAM_BODY)


def test_the_assistants_handlers_extend_the_projects() -> None:
    assert ASSISTANTS_EXCEPTION_HANDLERS.items() >= EXCEPTION_HANDLERS.items()
    assert UpstreamError in ASSISTANTS_EXCEPTION_HANDLERS
    assert issubclass(UpstreamError, MemproxyError) and not issubclass(UpstreamError, OpenAIError)


def test_every_exception_of_the_engine_and_emulator_is_a_memproxy_error() -> None:
    """Only the emulator's ``_Dropped`` (control flow: it ends a connection, nothing answers it) is exempt."""
    found = {}
    for package in (proxy.assistants, proxy.emulator):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                    found[f"{info.name}.{name}"] = value
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, MemproxyError))
    assert outside == ["proxy.emulator.middleware._Dropped"]
    assert "proxy.assistants.upstream.UpstreamError" in found
