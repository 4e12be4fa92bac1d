"""``/v1/files``: multipart upload, list, retrieve, delete and download, kept in memory.

The multipart body is parsed here (a few lines) rather than through python-multipart, which is not
a dependency of the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.assistants.validation import invalid, not_found
from proxy.emulator.common import cursor_page, now, require_value
from proxy.emulator.ids import new_id
from proxy.emulator.state import StoredFile
from proxy.errors import OpenAIError

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

_PARAM = re.compile(r'''\b(name|filename)="((?:[^"\\]|\\.)*)"''')


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Parts of a ``multipart/form-data`` body by field name; 400 if it is not one."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not match:
        raise OpenAIError(400, "Invalid Content-Type header: expected multipart/form-data with a boundary.")
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts: dict[str, Part] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        params = dict(_PARAM.findall(head.decode("utf-8", "replace")))
        if "name" in params:
            parts[params["name"]] = Part(params["name"], params.get("filename"), data.removesuffix(b"\r\n"))
    return parts


def _stored(request: Request) -> StoredFile:
    file_id = request.path_params["file_id"]
    try:
        return request.app.state.emulator.files[file_id]
    except KeyError:
        raise not_found("file", file_id, param="file_id") from None


async def upload(request: Request) -> Response:
    """``POST /files`` (multipart: ``file`` and ``purpose``)."""
    parts = parse_multipart(await request.body(), request.headers.get("content-type", ""))
    require_value(parts.get("file"), "file")
    require_value(parts.get("purpose"), "purpose")
    purpose = parts["purpose"].data.decode("utf-8", "replace")
    if purpose not in PURPOSES:
        raise invalid("purpose", f"expected one of {', '.join(map(repr, PURPOSES))}, but got '{purpose}'.")
    upload = parts["file"]
    obj = {
        "id": new_id("file"),
        "object": "file",
        "bytes": len(upload.data),
        "created_at": now(),
        "filename": upload.filename or "upload",
        "purpose": purpose,
        "status": "processed",
    }
    request.app.state.emulator.files[obj["id"]] = StoredFile(obj, upload.data)
    return JSONResponse(obj)


async def list_files(request: Request) -> Response:
    """``GET /files``: ``purpose`` filter, ``after``/``limit``/``order`` (default desc)."""
    purpose = request.query_params.get("purpose")
    objs = [f.obj for f in request.app.state.emulator.files.values() if purpose in (None, f.obj["purpose"])]
    return JSONResponse(cursor_page(objs, request.query_params, default_limit=10000, max_limit=10000))


async def retrieve(request: Request) -> Response:
    return JSONResponse(_stored(request).obj)


async def delete(request: Request) -> Response:
    stored = _stored(request)
    del request.app.state.emulator.files[stored.obj["id"]]
    return JSONResponse({"id": stored.obj["id"], "object": "file", "deleted": True})


async def content(request: Request) -> Response:
    """``GET /files/{id}/content``: the uploaded bytes."""
    return Response(_stored(request).content, media_type="application/octet-stream")


ROUTES = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
    Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", content, methods=["GET"]),
]
