"""Structured logs: JSON lines an operator can ship, with request ids, and never a key or a body."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time

import openai
import pytest

from proxy.client import Memory
from proxy.logs import log_format, setup_logging

SECRET_KEY = "sk-proj-SECRETdoNotLog1234567890abcdef"
DISTINCTIVE = "my grandmother's quokka is called Zebulon-Quartz-4242"


@contextlib.contextmanager
def captured(fmt: str, level: str = "debug"):
    """Route every log record of the process through memproxy's setup into a buffer; restore after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    setup_logging(level, fmt, stream=buffer)
    try:
        yield buffer
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def settled(buffer: io.StringIO, needle: str) -> str:
    """The output once ``needle`` is in it: the access line is written just after the last byte is sent."""
    deadline = time.monotonic() + 5
    while needle not in buffer.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    return buffer.getvalue()


def test_json_lines_carry_request_ids_and_never_keys_or_bodies(make_proxy, emulator) -> None:
    proxy = make_proxy(memory_recall_deadline_ms=0.001)  # recall always degrades: a warning mid-request
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=SECRET_KEY, max_retries=0)
    with captured("json") as buffer:
        with Memory(proxy.url, api_key=SECRET_KEY) as memory:
            memory.user("quokka-owner").remember(DISTINCTIVE)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": DISTINCTIVE}], user="quokka-owner"
        )
        with pytest.raises(openai.BadRequestError):
            client.with_options(default_headers={"x-emulator-fault": "status=400"}).responses.create(
                model="gpt-4o-mini", input=DISTINCTIVE, safety_identifier="quokka-owner"
            )
        output = settled(buffer, '"status": 400')
    assert raw.headers["x-memory-status"] == "degraded"
    assert SECRET_KEY not in output and SECRET_KEY[8:] not in output
    assert "Zebulon" not in output and "quokka-owner" not in output

    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    access = [line for line in lines if line["logger"] == "memproxy.access"]
    chat = next(line for line in access if line["route"] == "/v1/chat/completions")
    # the upstream's own request id, so a line can be matched with OpenAI's side of the call
    assert chat["request_id"] == raw.headers["x-request-id"]
    assert chat["status"] == 200 and chat["method"] == "POST" and chat["memory"] == "degraded"
    assert chat["tenant"].startswith("t_") and chat["subject"] == raw.headers["x-memory-subject"]
    assert chat["upstream_ms"] <= chat["duration_ms"]
    # the warning logged mid-request carries the id the access line lists as local_id
    warning = next(line for line in lines if line["logger"] == "memproxy.hooks" and line["level"] == "warning")
    assert warning["request_id"] == chat["local_id"] and warning["tenant"] == chat["tenant"]
    assert any(line["route"] == "/v1/responses" and line["status"] == 400 for line in access)
    # the memory API never goes upstream: a generated id
    remembered = next(line for line in access if line["route"].startswith("/memory/v1/users/"))
    assert remembered["request_id"].startswith("req_") and "upstream_ms" not in remembered


def test_text_lines_carry_the_request_id(make_proxy, emulator) -> None:
    proxy = make_proxy()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=SECRET_KEY, max_retries=0)
    with captured("text", "info") as buffer:
        raw = client.models.with_raw_response.list()
        output = settled(buffer, "memproxy.access")
    line = next(line for line in output.splitlines() if "memproxy.access" in line)
    assert "GET /v1/{path:path} 200" in line and line.endswith(f"[{raw.headers['x-request-id']}]")
    assert SECRET_KEY not in output


def test_a_key_in_a_message_is_masked() -> None:
    with captured("json", "info") as buffer:
        logging.getLogger("memproxy.test").warning("upstream said: invalid key %s (Bearer %s)", SECRET_KEY, "abc.def")
    line = json.loads(buffer.getvalue())
    assert SECRET_KEY not in line["message"] and "abc.def" not in line["message"] and "[redacted]" in line["message"]


def test_the_format_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("MEMPROXY_LOG_FORMAT", raising=False)
    assert log_format() == "text"
    monkeypatch.setenv("MEMPROXY_LOG_FORMAT", "JSON")
    assert log_format() == "json"
    monkeypatch.setenv("MEMPROXY_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="MEMPROXY_LOG_FORMAT"):
        log_format()
