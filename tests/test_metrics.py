"""``/metrics``: what an operator scraping a proxy sees after real traffic through it."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.client import Memory

FACT = "They prefer metric units and run Kubernetes in production"


def scrape(proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    response = httpx2.get(proxy.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def sdk(proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy()


def test_requests_are_counted_by_route_template_and_status(proxy, emulator, request) -> None:
    client = sdk(proxy, "sk-metrics-1")
    before = scrape(proxy)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    client.models.list()
    with pytest.raises(openai.RateLimitError):
        client.with_options(default_headers={"x-emulator-fault": "status=429"}).models.list()
    with Memory(proxy.url, api_key="sk-metrics-1") as memory:
        memory.user(f"user-{request.node.name}").remember(FACT)
    after = scrape(proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("memproxy_requests_total", route="/v1/chat/completions", method="POST", status="200") == 1
    # plain forwarding is one series per template, never one per path (no cardinality blow-up)
    assert delta("memproxy_requests_total", route="/v1/{path:path}", method="GET", status="200") == 1
    assert delta("memproxy_requests_total", route="/v1/{path:path}", method="GET", status="429") == 1
    # mounted memory API routes keep their full template, the user id never becomes a label
    assert (
        delta("memproxy_requests_total", route="/memory/v1/users/{subject:path}/memories", method="POST", status="201")
        == 1
    )
    assert not any(request.node.name in str(labels) for _, labels in after)
    assert delta("memproxy_request_duration_seconds_count", route="/v1/chat/completions", method="POST") == 1
    assert delta("memproxy_upstream_latency_seconds_count", route="/v1/chat/completions") == 1
    assert delta("memproxy_added_latency_seconds_count", route="/v1/chat/completions") == 1
    # the upstream's share is part of the whole, and the memory API never goes upstream
    total = delta("memproxy_request_duration_seconds_sum", route="/v1/chat/completions", method="POST")
    assert 0 < delta("memproxy_upstream_latency_seconds_sum", route="/v1/chat/completions") <= total
    assert delta("memproxy_upstream_latency_seconds_count", route="/memory/v1/users/{subject:path}/memories") == 0
    # every stream and body was released
    assert value(after, "memproxy_open_upstream_responses") == 0
    assert value(after, "memproxy_memory_up") == 1


def test_an_open_stream_shows_until_it_ends(proxy, emulator) -> None:
    client = sdk(proxy, "sk-metrics-1")
    stream = client.with_options(default_headers={"x-emulator-fault": "event_delay=0.3"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "tell me a long story please"}], stream=True
    )
    next(iter(stream))
    assert value(scrape(proxy), "memproxy_open_upstream_responses") == 1
    stream.close()
    deadline = time.monotonic() + 5
    while value(scrape(proxy), "memproxy_open_upstream_responses") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(proxy), "memproxy_open_upstream_responses") == 0


def test_recall_and_injected_memories_are_measured(proxy, emulator, request) -> None:
    user = f"user-{request.node.name}"
    with Memory(proxy.url, api_key="sk-metrics-2") as memory:
        memory.user(user).remember(FACT)
    before = scrape(proxy)
    raw = sdk(proxy, "sk-metrics-2").responses.with_raw_response.create(
        model="gpt-4o-mini", input="Which units do I prefer?", safety_identifier=user
    )
    after = scrape(proxy)
    recalled = int(raw.headers["x-memory-recalled"])
    assert raw.headers["x-memory-status"] == "ok" and recalled >= 1
    assert (
        value(after, "memproxy_memories_injected_total") - value(before, "memproxy_memories_injected_total") == recalled
    )
    assert (
        value(after, "memproxy_memory_requests_total", status="ok")
        - value(before, "memproxy_memory_requests_total", status="ok")
        == 1
    )
    assert value(after, "memproxy_recall_duration_seconds_count", outcome="ok") > value(
        before, "memproxy_recall_duration_seconds_count", outcome="ok"
    )


def test_queue_depth_reflects_pending_extraction_jobs(proxy, emulator, request) -> None:
    # The fixture's proxies run no worker: a captured turn stays queued.
    depth = value(scrape(proxy), "memproxy_queue_depth")
    sdk(proxy, "sk-metrics-3").responses.create(
        model="gpt-4o-mini", input="I live in Lisbon and I love sardines", safety_identifier=f"user-{request.node.name}"
    )
    deadline = time.monotonic() + 5
    while (
        (samples := scrape(proxy)) and value(samples, "memproxy_queue_depth") == depth and time.monotonic() < deadline
    ):
        time.sleep(0.05)  # the turn is enqueued just after the response, off the request path
    assert value(samples, "memproxy_queue_depth") == depth + 1
    assert value(samples, "memproxy_turns_captured_total") >= 1
    assert ("memproxy_dead_letters", ()) in samples
    assert value(samples, "memproxy_worker_running") == 0


def test_degraded_requests_are_counted_by_cause(make_proxy, emulator) -> None:
    proxy = make_proxy(memory_recall_deadline_ms=0.001)
    user = "user-degraded"
    with Memory(proxy.url, api_key="sk-metrics-4") as memory:
        memory.user(user).remember(FACT)
    before = scrape(proxy)
    assert value(before, "memproxy_degraded_total", cause="recall_timeout") == 0  # every cause exists from the start
    assert ("memproxy_degraded_total", (("cause", "hook_error"),)) in before
    raw = sdk(proxy, "sk-metrics-4").responses.with_raw_response.create(
        model="gpt-4o-mini", input="Which units do I prefer?", safety_identifier=user
    )
    assert raw.headers["x-memory-status"] == "degraded"
    after = scrape(proxy)
    assert value(after, "memproxy_degraded_total", cause="recall_timeout") == 1
    assert value(after, "memproxy_degraded_total", cause="recall_error") == 0
    assert value(after, "memproxy_memory_requests_total", status="degraded") == 1
    assert value(after, "memproxy_recall_duration_seconds_count", outcome="cancelled") == 1


def test_each_proxy_has_its_own_numbers(make_proxy, proxy, emulator) -> None:
    fresh = make_proxy()
    sdk(proxy, "sk-metrics-1").models.list()
    assert value(scrape(fresh), "memproxy_requests_total", route="/v1/{path:path}", method="GET", status="200") == 0


def test_audit_appends_are_counted(proxy, request) -> None:
    before = scrape(proxy)
    with Memory(proxy.url, api_key="sk-metrics-audit") as memory:
        user = memory.user(f"user-{request.node.name}")
        user.export()
        user.forget()
    after = scrape(proxy)
    assert (
        value(after, "memproxy_audit_entries_appended_total") - value(before, "memproxy_audit_entries_appended_total")
        == 2
    )
