"""HTTP routes of the Assistants v2 API over the engine, shared by the bridge and the emulator.

:func:`assistants_routes` takes an engine factory (request -> :class:`Engine`): the bridge's builds
an HTTP upstream with the caller's credentials over the proxy's state store
(:func:`proxy.hooks.bridge.bridge_routes`);
the emulator's runs the same routes over its in-process Responses engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy import jsonbody
from proxy.assistants import assistants, messages, runs, threads
from proxy.assistants.engine import Engine
from proxy.assistants.errors import error_response
from proxy.assistants.translate import RunStream
from proxy.assistants.validation import check_list_params
from proxy.errors import OpenAIError

log = logging.getLogger("memproxy.assistants")

EngineFactory = Callable[[Request], Awaitable[Engine]]
Handler = Callable[[Engine, Request, dict[str, Any]], Awaitable[Any]]
BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


async def _body(request: Request) -> dict[str, Any]:
    if request.method != "POST":
        return {}
    raw = await request.body()
    try:  # bounded: a body nested too deep or holding too many values is refused like malformed JSON
        body = jsonbody.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, BAD_JSON) from None
    if not isinstance(body, dict):
        raise OpenAIError(400, BAD_JSON)
    return body


def _endpoint(
    factory: EngineFactory, handler: Handler, poll_after_ms: int | None
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: engine, JSON body, JSON or SSE out.

    Errors are rendered by the app's exception handlers (:data:`proxy.assistants.errors.ASSISTANTS_EXCEPTION_HANDLERS`,
    installed by the proxy and the emulator).
    """

    async def endpoint(request: Request) -> Response:
        engine = await factory(request)
        try:
            result = await handler(engine, request, await _body(request))
        except Exception as exc:
            refusal = await error_response(request, exc)
            if refusal is None:
                raise
            refusal.headers.update(engine.hooks.headers())  # what memory did (or not) before the refusal
            return refusal
        headers = engine.hooks.headers()
        if isinstance(result, RunStream):
            headers |= {"cache-control": "no-cache", "x-accel-buffering": "no"}
            return StreamingResponse(result.body(), media_type="text/event-stream; charset=utf-8", headers=headers)
        if poll_after_ms and result.get("object") == "thread.run":
            headers["openai-poll-after-ms"] = str(poll_after_ms)
        return JSONResponse(result, headers=headers or None)

    return endpoint


def _p(request: Request, name: str) -> str:
    return request.path_params[name]


def _list(request: Request) -> dict[str, Any]:
    return check_list_params(request.query_params)


# --- handlers that need more than one call -------------------------------------------------------


async def _create_run(engine: Engine, request: Request, body: dict[str, Any]) -> Any:
    include = request.query_params.getlist("include[]") or request.query_params.getlist("include")
    if include:
        body = {**body, "include": include}
    run = await runs.prepare_create(engine, _p(request, "thread_id"), body)
    if not body.get("stream"):
        return await runs.start(engine, run)
    return RunStream(engine, run, await engine.upstream.stream_response(run.body), [])


async def _create_thread_and_run(engine: Engine, request: Request, body: dict[str, Any]) -> Any:
    thread, run = await runs.prepare_create_and_run(engine, body)
    if not body.get("stream"):
        return await runs.start(engine, run)
    events = await engine.upstream.stream_response(run.body)
    return RunStream(engine, run, events, [("thread.created", thread)])


async def _submit(engine: Engine, request: Request, body: dict[str, Any]) -> Any:
    if not body.get("stream"):
        return await runs.submit_tool_outputs(engine, _p(request, "thread_id"), _p(request, "run_id"), body)
    submission = await runs.prepare_submit(engine, _p(request, "thread_id"), _p(request, "run_id"), body)
    events = await engine.upstream.stream_response({**submission.run.body, "input": submission.items})
    step = await submission.close_step(engine)
    prelude = [("thread.run.step.completed", step)] if step else []
    return RunStream(engine, submission.run, events, prelude, resumed=True)


def _assistant_table() -> list[tuple[str, str, Handler]]:
    """Assistants: create, list, retrieve, update, delete."""
    a = assistants
    return [
        ("POST", "/assistants", lambda e, q, b: a.create(e, b)),
        ("GET", "/assistants", lambda e, q, b: a.list_all(e, _list(q))),
        ("GET", "/assistants/{assistant_id}", lambda e, q, b: a.retrieve(e, _p(q, "assistant_id"))),
        ("POST", "/assistants/{assistant_id}", lambda e, q, b: a.update(e, _p(q, "assistant_id"), b)),
        ("DELETE", "/assistants/{assistant_id}", lambda e, q, b: a.delete(e, _p(q, "assistant_id"))),
    ]


def _thread_table() -> list[tuple[str, str, Handler]]:
    """Threads and their messages."""
    t, m = threads, messages
    return [
        ("POST", "/threads", lambda e, q, b: t.create(e, b)),
        ("GET", "/threads/{thread_id}", lambda e, q, b: t.retrieve(e, _p(q, "thread_id"))),
        ("POST", "/threads/{thread_id}", lambda e, q, b: t.update(e, _p(q, "thread_id"), b)),
        ("DELETE", "/threads/{thread_id}", lambda e, q, b: t.delete(e, _p(q, "thread_id"))),
        ("POST", "/threads/{thread_id}/messages", lambda e, q, b: m.create(e, _p(q, "thread_id"), b)),
        (
            "GET",
            "/threads/{thread_id}/messages",
            lambda e, q, b: m.list_all(e, _p(q, "thread_id"), _list(q), q.query_params.get("run_id")),
        ),
        (
            "GET",
            "/threads/{thread_id}/messages/{message_id}",
            lambda e, q, b: m.retrieve(e, _p(q, "thread_id"), _p(q, "message_id")),
        ),
        (
            "POST",
            "/threads/{thread_id}/messages/{message_id}",
            lambda e, q, b: m.update(e, _p(q, "thread_id"), _p(q, "message_id"), b),
        ),
        (
            "DELETE",
            "/threads/{thread_id}/messages/{message_id}",
            lambda e, q, b: m.delete(e, _p(q, "thread_id"), _p(q, "message_id")),
        ),
    ]


def _run_table() -> list[tuple[str, str, Handler]]:
    """Runs (create-and-run included), tool outputs and run steps."""
    r = runs
    return [
        ("POST", "/threads/runs", _create_thread_and_run),
        ("POST", "/threads/{thread_id}/runs", _create_run),
        ("GET", "/threads/{thread_id}/runs", lambda e, q, b: r.list_all(e, _p(q, "thread_id"), _list(q))),
        (
            "GET",
            "/threads/{thread_id}/runs/{run_id}",
            lambda e, q, b: r.retrieve(e, _p(q, "thread_id"), _p(q, "run_id")),
        ),
        (
            "POST",
            "/threads/{thread_id}/runs/{run_id}",
            lambda e, q, b: r.update(e, _p(q, "thread_id"), _p(q, "run_id"), b),
        ),
        (
            "POST",
            "/threads/{thread_id}/runs/{run_id}/cancel",
            lambda e, q, b: r.cancel(e, _p(q, "thread_id"), _p(q, "run_id")),
        ),
        ("POST", "/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", _submit),
        (
            "GET",
            "/threads/{thread_id}/runs/{run_id}/steps",
            lambda e, q, b: r.list_steps(e, _p(q, "thread_id"), _p(q, "run_id"), _list(q)),
        ),
        (
            "GET",
            "/threads/{thread_id}/runs/{run_id}/steps/{step_id}",
            lambda e, q, b: r.retrieve_step(e, _p(q, "thread_id"), _p(q, "run_id"), _p(q, "step_id")),
        ),
    ]


def _table() -> list[tuple[str, str, Handler]]:
    """(method, path under /v1, handler) for every Assistants v2 endpoint."""
    return [*_assistant_table(), *_run_table(), *_thread_table()]  # /threads/runs before /threads/{thread_id}


def assistants_routes(factory: EngineFactory, *, poll_after_ms: int | None = None) -> list[BaseRoute]:
    """The Assistants v2 routes under ``/v1``; ``poll_after_ms`` is sent as ``openai-poll-after-ms`` on runs."""
    return [
        Route("/v1" + path, _endpoint(factory, handler, poll_after_ms), methods=[method])
        for method, path, handler in _table()
    ]
