"""Test control: request recording and fault injection, plus the ``/_emulator/*`` endpoints.

Tests of a proxy need to see exactly what reached the upstream and to make the upstream misbehave
on purpose. Both live here; ``middleware.py`` applies them to every ``/v1`` request.

Endpoints (outside ``/v1``, never recorded):

- ``GET /_emulator/requests``: every ``/v1`` request received, in order: ``method``, ``path``,
  ``query`` (raw string), ``query_params`` (name -> value, or list when repeated), ``headers``
  (all, names lower-cased, repeated ones joined by ", "), ``has_authorization``, ``body`` (parsed
  JSON for a JSON body, else the text, else ``{"size": n, "base64": "..."}``), ``request_id``
  (the ``x-request-id`` answered) and ``fault`` (the fault applied, or null). ``DELETE`` clears.
- ``POST /_emulator/faults``: register one fault (a JSON object) or several (a list); answers the
  registered faults with their ids. ``GET`` lists the pending ones, ``DELETE`` clears them.
- ``POST /_emulator/reset``: clear recordings, faults and every stored object.

A fault (JSON keys; all optional):

- ``method`` (any when absent) and ``path`` (prefix of the request path; ``/chat`` and
  ``/v1/chat`` both match ``/v1/chat/completions``; default: every ``/v1`` path): which requests.
- ``times``: how many matching requests it applies to (default 1; 0 = forever).
- ``status``: answer with this status and an OpenAI-shaped error; ``message``, ``type``, ``code``
  override the error's fields, ``body`` (any JSON) replaces the whole body.
- ``delay``: seconds to wait before handling the request.
- ``event_delay``: seconds to wait before each body chunk after the first (each SSE event is one).
- ``drop_after``: close the connection mid-response after this many body chunks of a streamed
  (SSE) response, or this many bytes of any other response.
- ``gzip``: send the body gzip-encoded with ``Content-Encoding: gzip``.
- ``headers``: extra response headers (e.g. ``{"retry-after": "1"}``); they override the defaults.

Per request, header ``x-emulator-fault`` carries the same options as ``key=value`` pairs separated
by ``;`` (``status=429; delay=0.2; header.retry-after=1; message=slow down``). Values are numbers,
``true``/``false`` or text; ``header.<name>=<value>`` adds a response header. The header fault
applies to that request only and takes precedence over registered faults (which are then not used).
"""

from __future__ import annotations

import base64
import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import jsonbody
from proxy.emulator.common import BAD_JSON, UNBOUNDED
from proxy.errors import OpenAIError, envelope

FAULT_HEADER = "x-emulator-fault"

_FIELDS = {
    "method",
    "path",
    "times",
    "status",
    "message",
    "type",
    "code",
    "body",
    "delay",
    "event_delay",
    "drop_after",
    "gzip",
    "headers",
}


@dataclass
class Fault:
    """One way to misbehave, for ``times`` requests matching ``method`` and ``path``."""

    method: str | None = None
    path: str = "/v1"
    times: int = 1
    status: int | None = None
    message: str | None = None
    type: str | None = None
    code: str | None = None
    body: Any = None
    delay: float = 0.0
    event_delay: float = 0.0
    drop_after: int | None = None
    gzip: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    id: str = ""

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        prefix = self.path if self.path.startswith("/") else "/" + self.path
        return path.startswith((prefix, "/v1" + prefix))

    def error_body(self) -> Any:
        """The body answered with ``status``: ``body`` as given, else an OpenAI error envelope."""
        if self.body is not None:
            return self.body
        status = self.status or 500
        default_type = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
        default_code = "rate_limit_exceeded" if status == 429 else None
        return envelope(
            self.message or f"Emulated fault: HTTP {status}.",
            type=self.type or default_type,
            code=self.code or default_code,
        )

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def fault_from_json(data: Any) -> Fault:
    """Validate a fault given as JSON (see module docstring)."""
    if not isinstance(data, dict):
        raise OpenAIError(400, "A fault must be a JSON object.")
    unknown = set(data) - _FIELDS
    if unknown:
        raise OpenAIError(400, f"Unknown fault option(s): {', '.join(sorted(unknown))}.", param=min(unknown))
    try:
        fault = Fault(**{key: value for key, value in data.items() if value is not None})
        fault.times = int(fault.times)
        fault.status = int(fault.status) if fault.status is not None else None
        fault.delay, fault.event_delay = float(fault.delay), float(fault.event_delay)
        fault.drop_after = int(fault.drop_after) if fault.drop_after is not None else None
        fault.headers = {str(k).lower(): str(v) for k, v in dict(fault.headers).items()}
    except (TypeError, ValueError) as exc:
        raise OpenAIError(400, f"Invalid fault: {exc}.") from None
    if fault.status is not None and not 100 <= fault.status <= 599:
        raise OpenAIError(400, "Invalid fault: status must be an HTTP status code.", param="status")
    return fault


def fault_from_header(value: str) -> Fault:
    """Parse the ``x-emulator-fault`` header: ``key=value`` pairs separated by ``;``."""
    data: dict[str, Any] = {"headers": {}}
    for pair in filter(None, (part.strip() for part in value.split(";"))):
        key, sep, raw = pair.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if not sep:
            raise OpenAIError(400, f"Invalid {FAULT_HEADER} header: expected key=value, got '{pair}'.")
        if key.startswith("header."):
            data["headers"][key.removeprefix("header.")] = raw
        else:
            data[key] = _scalar(raw)
    data.pop("times", None)
    return fault_from_json(data)


def _scalar(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


class FaultBook:
    """Registered faults; the first matching one with uses left applies."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.id = f"fault_{next(self._ids)}"
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, using up one of its ``times``."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times == 1:
                        self._faults.remove(fault)
                    elif fault.times > 1:
                        fault.times -= 1
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.describe() for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


class Recorder:
    """Every ``/v1`` request, in arrival order."""

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, scope: dict[str, Any], body: bytes, request_id: str, fault: Fault | None) -> None:
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        query = scope.get("query_string", b"").decode("latin-1")
        entry = {
            "method": scope["method"],
            "path": scope["path"],
            "query": query,
            "query_params": _multi_dict(parse_qsl(query, keep_blank_values=True)),
            "headers": _joined(headers),
            "has_authorization": any(name == "authorization" for name, _ in headers),
            "body": describe_body(body, _joined(headers).get("content-type", "")),
            "request_id": request_id,
            "fault": fault.describe() if fault else None,
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _joined(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Headers by name; a repeated header's values joined with ", " as HTTP allows."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _multi_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            out[key] = [*out[key], value] if isinstance(out[key], list) else [out[key], value]
        else:
            out[key] = value
    return out


def describe_body(body: bytes, content_type: str) -> Any:
    """JSON when it parses as JSON, else text when it is UTF-8, else size and base64; None when empty."""
    if not body:
        return None
    if "json" in content_type:
        try:
            return jsonbody.loads(body, max_values=UNBOUNDED)
        except ValueError:
            pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return {"size": len(body), "base64": base64.b64encode(body).decode("ascii")}


# --- /_emulator endpoints ------------------------------------------------------------------------


async def list_requests(request: Request) -> Response:
    return JSONResponse(request.app.state.emulator.recorder.entries())


async def clear_requests(request: Request) -> Response:
    request.app.state.emulator.recorder.clear()
    return JSONResponse({"deleted": True})


async def add_faults(request: Request) -> Response:
    try:
        data = jsonbody.loads(await request.body(), max_values=UNBOUNDED)
    except ValueError:
        raise OpenAIError(400, BAD_JSON) from None
    faults = [fault_from_json(item) for item in (data if isinstance(data, list) else [data])]
    book: FaultBook = request.app.state.emulator.faults
    return JSONResponse([book.add(fault).describe() for fault in faults])


async def list_faults(request: Request) -> Response:
    return JSONResponse(request.app.state.emulator.faults.pending())


async def clear_faults(request: Request) -> Response:
    request.app.state.emulator.faults.clear()
    return JSONResponse({"deleted": True})


async def reset(request: Request) -> Response:
    request.app.state.emulator.reset()
    return JSONResponse({"reset": True})
