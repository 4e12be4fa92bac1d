"""Erasure fences the owner: work begun before an erasure never brings a memory back.

The extraction call is slowed at the upstream (the emulator's fault injection) so the erasure lands
while the job is running; the worker must then store nothing. A turn that begins after the erasure
is a new life and is learned. Proven in one process (SQLite) and across two proxies sharing a real
redis-server, the erasure on one and the worker on the other.
"""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

KEY = "sk-fence-app"
SLOW = 1.5


def wait_for(predicate, timeout: float = 20.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}")
        time.sleep(0.05)


def memories(proxy, user: str) -> list[dict]:
    url = f"{proxy.url}/memory/v1/users/{user}/memories?include_deleted=true"
    return httpx.get(url, headers={"authorization": f"Bearer {KEY}"}, timeout=10).json()["data"]


def say(proxy, user: str, text: str) -> None:
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0) as client:
        client.responses.create(model="gpt-4o-mini", input=text, safety_identifier=user)


def learning(**extra):
    """A proxy that learns with the LLM extractor (the emulator's chat model) in its own worker."""
    return {"worker_in_proxy": True, "worker_poll_interval": 0.05, "llm_api_key": KEY, **extra}


def erase_while_extracting(learner, eraser, emulator, user: str) -> dict:
    """Send a turn, wait until its extraction call is in flight (slowed), erase through ``eraser``."""
    emulator.fault(path="/v1/chat/completions", delay=SLOW, times=1)
    say(learner, user, "I live in Lyon and my dog is called Rex.")
    wait_for(lambda: emulator.requests("/v1/chat/completions"), message="the extraction call")
    erased = httpx.delete(f"{eraser.url}/memory/v1/users/{user}", headers={"authorization": f"Bearer {KEY}"})
    assert erased.status_code == 200, erased.text
    return erased.json()


def test_an_extraction_in_flight_during_an_erasure_stores_nothing(make_proxy, emulator) -> None:
    proxy = make_proxy(**learning())
    worker = proxy.app.state.runtime.worker
    user = f"erin-{uuid.uuid4().hex[:6]}"

    report = erase_while_extracting(proxy, proxy, emulator, user)

    assert report["outcome"] == "ok"
    wait_for(lambda: worker.stats.fenced == 1, timeout=SLOW + 10, message="the fenced job")
    time.sleep(0.2)
    assert memories(proxy, user) == []
    runtime = proxy.app.state.runtime
    assert worker.stats.failed == 0 and worker.stats.ops["add"] == 0

    # a turn that begins after the erasure is a new life: learned normally
    say(proxy, user, "I play the cello every evening.")
    wait_for(lambda: memories(proxy, user), message="the new life's memory")
    assert any("cello" in m["text"] for m in memories(proxy, user))
    assert not any("Lyon" in m["text"] or "Rex" in m["text"] for m in memories(proxy, user))
    assert runtime.counters.get("degraded.capture_error", 0) == 0


def test_an_erasure_on_one_replica_fences_the_worker_of_another(make_proxy, emulator, redis_server_url) -> None:
    shared = {"redis_url": redis_server_url, "secret": "fence-secret", "redis_prefix": f"fence-{uuid.uuid4().hex[:8]}"}
    shared["single_replica"] = True  # the learner's memories are the only ones: the fence in Redis is under test
    learner = make_proxy(**learning(**shared))
    eraser = make_proxy(**shared)  # no worker of its own: the erasure only
    user = f"erin-{uuid.uuid4().hex[:6]}"

    report = erase_while_extracting(learner, eraser, emulator, user)

    assert report["outcome"] == "ok"
    worker = learner.app.state.runtime.worker
    wait_for(lambda: worker.stats.fenced == 1, timeout=SLOW + 10, message="the fenced job on the other replica")
    assert memories(learner, user) == [] and worker.stats.ops["add"] == 0
