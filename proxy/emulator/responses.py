"""``/v1/responses``: the HTTP side of the Responses engine (``engine.py``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.assistants.validation import invalid
from proxy.emulator.common import cursor_page, parse_json_body
from proxy.emulator.engine import ResponsesEngine
from proxy.emulator.sse import encode_event, sse_response


def _engine(request: Request) -> ResponsesEngine:
    return ResponsesEngine(request.app.state.emulator)


async def create(request: Request) -> Response:
    """``POST /responses``: JSON, SSE when ``stream`` is true, ``queued`` when ``background`` is."""
    body = parse_json_body(await request.body())
    engine = _engine(request)
    if body.get("stream"):
        events = engine.events(engine.prepare(body))
        return sse_response(encode_event(event, event["type"]) for event in events)
    return JSONResponse(engine.create(body))


async def retrieve(request: Request) -> Response:
    if request.query_params.get("stream") in ("true", "1"):
        raise invalid("stream", "resuming a response stream is not supported by the emulator.")
    return JSONResponse(_engine(request).stored(request.path_params["response_id"]).response)


async def delete(request: Request) -> Response:
    return JSONResponse(_engine(request).delete(request.path_params["response_id"]))


async def cancel(request: Request) -> Response:
    return JSONResponse(_engine(request).cancel(request.path_params["response_id"]))


async def input_items(request: Request) -> Response:
    """``GET /responses/{id}/input_items``: the items this request supplied (default order desc)."""
    stored = _engine(request).stored(request.path_params["response_id"])
    return JSONResponse(cursor_page(stored.input_items, request.query_params))


ROUTES = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
]
