"""``/v1/models``: a fixed catalogue, so clients that list or check models work offline.

Generation endpoints accept any model name (the emulator has one behaviour for all); only
``GET /models/{id}`` answers 404 ``model_not_found`` for a name outside this list. Embedding sizes
are in ``EMBEDDING_DIMENSIONS``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import OpenAIError

CREATED = 1_700_000_000  # a fixed timestamp: the catalogue never changes

CHAT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o4-mini",
)
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MODEL_IDS = CHAT_MODELS + tuple(EMBEDDING_DIMENSIONS)


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "system"}


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [model_object(model_id) for model_id in MODEL_IDS]})


async def retrieve_model(request: Request) -> Response:
    model_id = request.path_params["model"]
    if model_id not in MODEL_IDS:
        raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
    return JSONResponse(model_object(model_id))


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
