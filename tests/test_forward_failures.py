"""Upstream failures become OpenAI-shaped errors with a truthful x-should-retry."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def proxy_to_nowhere(make_proxy):
    return make_proxy(upstream_url=f"http://127.0.0.1:{closed_port()}/v1", connect_timeout=1.0)


def test_unreachable_upstream_is_a_502_safe_to_retry(proxy_to_nowhere) -> None:
    response = httpx.post(proxy_to_nowhere.url + "/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "true"
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "upstream_unreachable"


def test_sdk_reports_unreachable_upstream_as_api_error(proxy_to_nowhere) -> None:
    client = openai.OpenAI(base_url=proxy_to_nowhere.url + "/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.models.list()
    assert caught.value.status_code == 502


def test_health_probes_answer_without_upstream(proxy_to_nowhere) -> None:
    assert httpx.get(proxy_to_nowhere.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(proxy_to_nowhere.url + "/readyz").status_code == 200
