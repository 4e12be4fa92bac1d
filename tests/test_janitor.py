"""Expiry is explicit and enforced: an expired memory is removed on schedule, and the removal audited."""

from __future__ import annotations

import time

from proxy.client import Memory


def test_expired_memories_are_removed_and_the_removal_is_audited(make_proxy) -> None:
    proxy = make_proxy(janitor_interval=0.2)
    with Memory(proxy.url, api_key="sk-janitor") as memory:
        user = memory.user("dana")
        user.remember("Is in Rome until Friday", kind="temporary", ttl_seconds=0.5)
        user.remember("Speaks Italian")
        assert len(user.list()["data"]) == 2
        deadline = time.monotonic() + 10  # expired memories are hidden at once; the sweep deletes and audits
        while not (expired := [e for e in memory.audit()["data"] if e["action"] == "expire"]):
            assert time.monotonic() < deadline, "the janitor never ran"
            time.sleep(0.1)
        assert [m["text"] for m in user.list(include_deleted=True)["data"]] == ["Speaks Italian"]
        [entry] = expired
    assert entry["counts"] == {"memories": 1} and entry["subject"].startswith("s_") and "dana" not in str(entry)
