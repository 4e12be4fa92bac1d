"""OpenAI-shaped error responses, so SDKs surface the proxy's own errors like the upstream's."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    should_retry: bool | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build ``{"error": {...}}`` as the OpenAI API does.

    ``should_retry`` sets ``x-should-retry``, which the official SDKs obey over their status-code
    heuristics: it must be ``false`` whenever the upstream may already have acted on the request.
    """
    extra = dict(headers or {})
    if should_retry is not None:
        extra["x-should-retry"] = "true" if should_retry else "false"
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=extra)
