"""Logging: text for a terminal, one JSON object per line for deployments (``MEMPROXY_LOG_FORMAT``).

Every record made while a request is being served carries that request's id (the upstream's
``x-request-id`` once its answer is in, a generated one before and without it) and, where known,
the tenant (already an HMAC of the API key) and the hashed subject. Records made before the
upstream answered carry the generated id; the access line carries both (``local_id``). API keys and bodies are never
logged; as a second line of defence the formatters mask anything shaped like a key or a bearer
token that a message or a traceback might carry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import Scope

FORMATS = ("text", "json")
FORMAT_ENV = "MEMPROXY_LOG_FORMAT"

# Keys (sk-..., sess-...), bearer credentials, Azure api-key values.
_SECRET = re.compile(
    r"(?i)(?:\b(?:sk|sess|rk)-[A-Za-z0-9_\-]{6,}|(?<=bearer )[^\s\"',]+|(?<=api-key: )[^\s\"',]+|(?<=api_key=)[^\s\"',&]+)"
)


def redact(text: str) -> str:
    return _SECRET.sub("[redacted]", text) if text else text


class RequestInfo:
    """What one request's logs and metrics share; lives in :data:`current` while it is served."""

    __slots__ = (
        "headers_at",
        "local_id",
        "request_id",
        "scope",
        "start",
        "status",
        "subject",
        "tenant",
        "upstream",
    )

    def __init__(self, request_id: str, start: float, scope: Scope | None = None) -> None:
        self.request_id = request_id
        self.local_id = request_id  # kept when the upstream's id replaces it, to join earlier lines
        self.start = start
        self.upstream: float | None = None  # seconds to the upstream's response headers
        self.status = 0
        self.headers_at = 0.0
        self.scope = scope
        self.tenant: str | None = None
        self.subject: str | None = None


current: ContextVar[RequestInfo | None] = ContextVar("memproxy_request", default=None)


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def _tenant_of(info: RequestInfo) -> str | None:
    """The tenant id (an HMAC, never the key), worked out only when a record is actually logged."""
    if info.tenant is None and info.scope is not None:
        try:
            from starlette.datastructures import Headers

            from proxy.identity import tenant_for

            runtime = info.scope["app"].state.runtime
            info.tenant = tenant_for(Headers(scope=info.scope), runtime.settings, runtime.secret) or ""
        except Exception:  # noqa: BLE001 - no app, no runtime yet: the record goes without a tenant
            info.tenant = ""
    return info.tenant or None


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``tenant`` and ``subject`` of the request being served to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = current.get()
        if info is not None:
            record.request_id = info.request_id
            tenant = _tenant_of(info)
            if tenant:
                record.tenant = tenant
            if info.subject:
                record.subject = info.subject
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool, type(None))) else redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        request_id = getattr(record, "request_id", None)
        return f"{text} [{request_id}]" if request_id else text


def log_format(value: str | None = None) -> str:
    chosen = (value or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {chosen!r}")
    return chosen


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def setup_logging(level: str = "info", fmt: str | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one of ours; uvicorn's loggers propagate to it."""
    handler = make_handler(log_format(fmt), stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Connection-level debug chatter of the HTTP client says nothing an operator needs.
    for name in ("httpcore", "httpx", "httpcore2", "httpx2", "hpack"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler


access_log = logging.getLogger("memproxy.access")
