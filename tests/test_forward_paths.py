"""Paths that could leave the upstream base never reach any upstream."""

from __future__ import annotations

import httpx
import pytest

from proxy.forward import safe_suffix


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/../admin",
        b"/v1/files/%2e%2e/secrets",
        b"/v1/files/a%2Fb",
        b"/v1/files/a%5Cb",
        b"/v1//evil.example/x",
        b"/v1/http://evil.example/x",
        b"/v1/models/%00",
        b"/v2/models",
    ],
)
def test_escaping_paths_are_refused(raw: bytes) -> None:
    assert safe_suffix(raw) is None


@pytest.mark.parametrize(
    "raw, suffix",
    [
        (b"/v1/chat/completions", b"/chat/completions"),
        (b"/v1/files/file-abc/content", b"/files/file-abc/content"),
        (b"/v1/models/ft%3Agpt-4o%3Aacme", b"/models/ft%3Agpt-4o%3Aacme"),
        (b"/v1/models/", b"/models/"),
    ],
)
def test_ordinary_paths_map_below_the_base(raw: bytes, suffix: bytes) -> None:
    assert safe_suffix(raw) == suffix


def test_refused_path_answers_400_and_never_reaches_the_upstream(make_proxy, emulator) -> None:
    proxy = make_proxy()
    with httpx.Client() as client:
        request = client.build_request("GET", proxy.url + "/v1/files/x")
        request.url = request.url.copy_with(raw_path=b"/v1/files/%2e%2e/%2e%2e/etc/passwd")
        response = client.send(request)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_path"
    assert emulator.requests() == []
