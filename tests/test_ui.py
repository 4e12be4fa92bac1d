"""The memory explorer at /ui over HTTP: login and its cookie, bearer for scripts, CSRF, tenant scoping,
escaping, and edits, deletions and erasure landing in the memory layer and the audit log.

A real proxy over the emulator; memories are taught and read back with the memory API's own client.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import httpx
import pytest

from proxy.client import Memory
from proxy.owner import Owner
from proxy.ui.charts import Sampler
from proxy.ui.session import Signer

ADMIN = "op-ui-4b1d9e7c2a5f8e3d6c0b"
KEY_A, KEY_B = "sk-app-a", "sk-app-b"
HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def proxy(make_proxy):
    return make_proxy(admin_token=ADMIN)


@pytest.fixture(scope="module")
def tenants(proxy):
    """Two applications' tenants, each with a user; tenant B's user has a memory with markup in it."""
    secret = proxy.app.state.runtime.secret
    from proxy.ui.access import key_tenant

    settings = proxy.app.state.settings
    a, b = key_tenant(KEY_A, settings, secret), key_tenant(KEY_B, settings, secret)
    with Memory(proxy.url, api_key=KEY_A) as memory:
        alice = memory.user("alice@example.com")
        alice.remember("Lives in Lyon and cycles to work")
        alice.remember("Prefers green tea", kind="preference")
    with Memory(proxy.url, api_key=KEY_B) as memory:
        memory.user("bob").remember("Likes <script>alert('x')</script> jazz & blues")
    return a, b


def client(proxy, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, **kwargs)


def login(proxy, token: str = ADMIN, *, as_: str = "admin", headers: dict[str, str] | None = None) -> httpx.Client:
    http = client(proxy, headers=headers or {})
    form = http.get("/ui/login")
    assert form.status_code == 200
    csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text)[1]
    done = http.post("/ui/login", data={"login_csrf": csrf, "token": token, "as": as_, "next": "/ui/"})
    assert done.status_code == 303, done.text
    return http


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page)[1]


def api(proxy, key: str, subject: str):
    return Memory(proxy.url, api_key=key).user(subject)


def test_without_an_admin_token_the_explorer_says_how_to_enable_it(make_proxy) -> None:
    plain = make_proxy()
    for path in ("/ui/", "/ui/login", "/ui/tenants"):
        page = httpx.get(plain.url + path, headers=HTML)
        assert page.status_code == 503
        assert "MEMPROXY_ADMIN_TOKEN" in page.text and "memory explorer is off" in page.text
    assert httpx.post(plain.url + "/ui/login", data={"token": "anything"}).status_code == 503


def test_an_address_that_keeps_guessing_the_admin_token_must_wait(make_proxy) -> None:
    from proxy.ui.throttle import MAX_FAILURES

    guarded = make_proxy(admin_token=ADMIN)

    def attempt(token: str) -> httpx.Response:
        http = client(guarded)  # a new browser each time: only the address is the same
        csrf = re.search(r'name="login_csrf" value="([^"]+)"', http.get("/ui/login").text)[1]
        return http.post("/ui/login", data={"login_csrf": csrf, "token": token, "as": "admin"})

    assert attempt(ADMIN).status_code == 303  # a success wipes nothing it should not: it counts as none
    for guess in range(MAX_FAILURES):
        assert attempt(f"guess-{guess}").status_code == 401
    throttled = attempt(ADMIN)  # even the right token waits now: a guess that lands is not told apart
    assert throttled.status_code == 429 and "Too many failed logins" in throttled.text
    assert 0 < int(throttled.headers["retry-after"]) <= 300
    assert "memproxy_ui=" not in throttled.headers.get("set-cookie", "")
    assert guarded.app.state.runtime.counters["ui.login_throttled"] == 1
    guarded.app.state.login_throttle.window = 0.0  # the window passes
    assert attempt(ADMIN).status_code == 303


def test_login_sets_a_signed_http_only_strict_cookie_and_a_wrong_token_gets_none(proxy, tenants, caplog) -> None:
    refused_before = proxy.app.state.runtime.counters["ui.login_refused"]
    http = client(proxy)
    form = http.get("/ui/login")
    csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text)[1]
    wrong = http.post("/ui/login", data={"login_csrf": csrf, "token": ADMIN + "x", "as": "admin"})
    assert wrong.status_code == 401 and "not the admin token" in wrong.text
    assert "memproxy_ui=" not in wrong.headers.get("set-cookie", "")
    assert proxy.app.state.runtime.counters["ui.login_refused"] == refused_before + 1
    assert "refused a login" in caplog.text and ADMIN[:8] not in caplog.text
    metrics = httpx.get(proxy.url + "/metrics").text
    assert re.search(r'memproxy_events_total\{event="ui.login_refused"\} [1-9]', metrics)

    forged = client(proxy).post("/ui/login", data={"login_csrf": csrf, "token": ADMIN, "as": "admin"})
    assert forged.status_code == 403, "the login form's token is bound to its own cookie"

    http = login(proxy)
    cookie = next(c for c in http.cookies.jar if c.name == "memproxy_ui")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/"
    assert cookie.get_nonstandard_attr("SameSite").lower() == "strict"
    assert not cookie.secure, "plain HTTP on a loopback address: a local browser must be able to send it back"
    assert 0 < cookie.expires - time.time() <= 8 * 3600 + 5
    assert ADMIN not in cookie.value
    assert http.get("/ui/tenants").status_code == 200


def test_the_cookie_is_secure_and_host_prefixed_anywhere_but_plain_http_on_loopback(proxy) -> None:
    http = client(proxy, headers={"host": "memproxy.example.com"})
    form = http.get("/ui/login")
    assert "__Host-memproxy_ui_login=" in form.headers["set-cookie"]
    nonce = re.search(r"__Host-memproxy_ui_login=([^;]+)", form.headers["set-cookie"])[1]
    csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text)[1]
    done = http.post(
        "/ui/login",
        data={"login_csrf": csrf, "token": ADMIN, "as": "admin"},
        headers={"cookie": f"__Host-memproxy_ui_login={nonce}"},
    )
    assert done.status_code == 303
    flags = [part.strip().lower() for part in done.headers["set-cookie"].split(",")[0].split(";")]
    assert flags[0].startswith("__host-memproxy_ui=")
    assert {"secure", "httponly", "path=/", "samesite=strict"} <= set(flags)


def test_no_session_is_a_redirect_for_a_browser_and_a_401_for_a_script(proxy) -> None:
    page = httpx.get(proxy.url + "/ui/t/x/user?id=alice", headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=" + quote("/ui/t/x/user?id=alice", safe="")
    script = httpx.get(proxy.url + "/ui/tenants")
    assert script.status_code == 401 and script.headers["www-authenticate"].startswith("Bearer")
    signer = Signer(proxy.app.state.runtime.secret, ADMIN)
    expired = signer.issue(None, now=time.time() - 9 * 3600)
    altered = signer.issue(None)[:-2] + "AA"
    other_secret = Signer(b"another secret", ADMIN).issue(None)
    for value in (expired, altered, other_secret, "garbage"):
        assert httpx.get(proxy.url + "/ui/tenants", cookies={"memproxy_ui": value}).status_code == 401
    assert httpx.get(proxy.url + "/ui/tenants", cookies={"memproxy_ui": signer.issue(None)}).status_code == 200


def test_after_login_only_explorer_paths_are_followed(proxy) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui/\\evil"):
        http = client(proxy)
        csrf = re.search(r'name="login_csrf" value="([^"]+)"', http.get("/ui/login").text)[1]
        done = http.post("/ui/login", data={"login_csrf": csrf, "token": ADMIN, "as": "admin", "next": target})
        assert done.headers["location"] == "/ui/"


def test_bearer_admin_token_works_for_scripts_and_needs_no_csrf(proxy, tenants) -> None:
    a, _ = tenants
    bearer = {"authorization": f"Bearer {ADMIN}"}
    listing = httpx.get(proxy.url + "/ui/tenants", headers=bearer)
    assert listing.status_code == 200 and a in listing.text
    alice = api(proxy, KEY_A, "alice@example.com")
    target = next(m for m in alice.list()["data"] if m["kind"] == "preference")
    done = httpx.post(
        f"{proxy.url}/ui/t/{a}/user/memory/delete",
        data={"id": "alice@example.com", "memory": target["id"], "reason": "script cleanup"},
        headers=bearer,
    )
    assert done.status_code == 303
    assert alice.get(target["id"])["deleted_reason"] == "script cleanup"
    assert httpx.get(proxy.url + "/ui/tenants", headers={"authorization": "Bearer " + ADMIN[:-1]}).status_code == 403


def test_every_form_post_of_a_session_needs_its_csrf_token(proxy, tenants) -> None:
    a, _ = tenants
    alice = api(proxy, KEY_A, "alice@example.com")
    memory = alice.remember("Has a dog called Pixel")["memory"]
    http = login(proxy)
    page = http.get(f"/ui/t/{a}/user/memory", params={"id": "alice@example.com", "memory": memory["id"]})
    token = csrf_of(page.text)
    other = csrf_of(login(proxy).get("/ui/tenants").text)
    assert other != token
    edit = {"id": "alice@example.com", "memory": memory["id"], "text": "Has a cat", "kind": "fact"}
    for csrf in (None, "", "nope", other):
        data = edit if csrf is None else {**edit, "csrf": csrf}
        refused = http.post(f"/ui/t/{a}/user/memory/edit", data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text
        refused = http.post(f"/ui/t/{a}/user/erase", data={**data, "confirm": "alice@example.com"})
        assert refused.status_code == 403
    assert alice.get(memory["id"])["text"] == "Has a dog called Pixel", "nothing changed"
    assert alice.list()["data"], "nothing erased"
    assert http.post("/ui/logout", data={"csrf": other}).status_code == 403
    json_post = http.post(f"/ui/t/{a}/user/memory/edit", json={**edit, "csrf": token})
    assert json_post.status_code == 415


def test_an_application_key_sees_its_own_tenant_only(proxy, tenants) -> None:
    a, b = tenants
    http = login(proxy, KEY_A, as_="application")
    home = http.get("/ui/")
    assert home.status_code == 303 and home.headers["location"] == f"/ui/t/{a}"
    own = http.get(f"/ui/t/{a}")
    bob_owner = Owner.of(proxy.app.state.runtime.secret, b, "bob")
    alice_owner = Owner.of(proxy.app.state.runtime.secret, a, "alice@example.com")
    assert own.status_code == 200 and alice_owner.hash in own.text and bob_owner.hash not in own.text
    assert "alice@example.com" not in own.text, "users are listed by pseudonym: the id is stored nowhere"
    for path in (f"/ui/t/{b}", f"/ui/t/{b}/user?id=bob", f"/ui/t/{b}/audit", "/ui/tenants", "/ui/metrics"):
        refused = http.get(path)
        assert refused.status_code == 403, path
        assert "jazz" not in refused.text and bob_owner.hash not in refused.text
    token = csrf_of(own.text)
    erase = http.post(f"/ui/t/{b}/user/erase", data={"csrf": token, "id": "bob", "confirm": "bob"})
    assert erase.status_code == 403
    assert api(proxy, KEY_B, "bob").list()["data"], "tenant B's user is untouched"

    admin = login(proxy)
    listing = admin.get("/ui/tenants").text
    assert a in listing and b in listing


def test_memory_text_is_escaped_everywhere_it_is_shown(proxy, tenants) -> None:
    _, b = tenants
    http = login(proxy)
    user = http.get(f"/ui/t/{b}/user", params={"id": "bob", "q": "which music does bob like?"})
    assert user.status_code == 200
    assert "<script>alert" not in user.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; jazz &amp; blues" in user.text
    assert "script-src 'self'" in user.headers["content-security-policy"]
    assert user.headers["x-frame-options"] == "DENY" and user.headers["cache-control"] == "no-store"


def test_a_pseudonym_opens_only_with_the_user_id_behind_it(proxy, tenants) -> None:
    a, _ = tenants
    http = login(proxy)
    pseudonym = Owner.of(proxy.app.state.runtime.secret, a, "alice@example.com").hash
    wrong = http.get(f"/ui/t/{a}/open", params={"pseudonym": pseudonym, "id": "mallory"})
    assert wrong.status_code == 404 and "not the one behind" in wrong.text
    right = http.get(f"/ui/t/{a}/open", params={"pseudonym": pseudonym, "id": "alice@example.com"})
    assert right.status_code == 303 and right.headers["location"] == f"/ui/t/{a}/user?id=alice%40example.com"
    for params in ({"id": "x" * 257}, {"id": "a\x00b"}, {"id": "alice@example.com", "cursor": "not-a-cursor"}):
        assert http.get(f"/ui/t/{a}/user", params=params).status_code == 400


def test_query_shows_the_block_and_every_confidence_term(proxy, tenants) -> None:
    a, _ = tenants
    page = login(proxy).get(f"/ui/t/{a}/user", params={"id": "alice@example.com", "q": "Which city do I live in?"})
    assert page.status_code == 200
    block = re.search(r'<pre class="block" id="block">(.*?)</pre>', page.text, re.DOTALL)[1]
    assert "&lt;memories&gt;" in block and "Lyon" in block
    for term in ("Confidence", "Similarity", "Semantic", "Lexical", "Recency", "Frequency"):
        assert f'<th scope="col">{term}</th>' in page.text


def test_edit_text_kind_and_expiry_then_delete_through_the_service(proxy, tenants) -> None:
    a, _ = tenants
    alice = api(proxy, KEY_A, "alice@example.com")
    memory = alice.remember("Works at a bakery")["memory"]
    http = login(proxy)
    page = http.get(f"/ui/t/{a}/user/memory", params={"id": "alice@example.com", "memory": memory["id"]})
    token = csrf_of(page.text)
    base = {"csrf": token, "id": "alice@example.com", "memory": memory["id"]}
    bad = http.post(f"/ui/t/{a}/user/memory/edit", data={**base, "text": "x", "kind": "Bad Kind"})
    assert bad.status_code == 400 and "lowercase identifier" in bad.text
    bad = http.post(f"/ui/t/{a}/user/memory/edit", data={**base, "text": "x", "kind": "fact", "expiry": "ttl"})
    assert bad.status_code == 400 and "time to live" in bad.text
    done = http.post(
        f"/ui/t/{a}/user/memory/edit",
        data={
            **base,
            "text": "Works at a bookshop",
            "kind": "plan",
            "expiry": "ttl",
            "ttl_seconds": "3600",
            "reason": "changed jobs",
        },
    )
    assert done.status_code == 303
    stored = alice.get(memory["id"])
    assert (stored["text"], stored["kind"]) == ("Works at a bookshop", "plan")
    assert stored["history"][0]["text"] == "Works at a bakery" and stored["history"][0]["reason"] == "changed jobs"
    assert stored["expires_at"] is not None
    shown = http.get(done.headers["location"]).text
    assert "Saved." in shown and "Works at a bakery" in shown and "changed jobs" in shown

    gone = http.post(f"/ui/t/{a}/user/memory/delete", data={**base, "reason": "asked by the user"})
    assert gone.status_code == 303
    assert alice.get(memory["id"])["deleted_reason"] == "asked by the user"
    listing = http.get(gone.headers["location"]).text
    assert "Memory deleted (kept as a tombstone)" in listing and 'class="tombstone"' in listing


def test_erase_needs_the_user_id_typed_and_shows_its_audit_entry(proxy, tenants) -> None:
    a, _ = tenants
    carol = api(proxy, KEY_A, "carol")
    carol.remember("Is training for a marathon")
    http = login(proxy)
    form = http.get(f"/ui/t/{a}/user/erase", params={"id": "carol"})
    token = csrf_of(form.text)
    wrong = http.post(f"/ui/t/{a}/user/erase", data={"csrf": token, "id": "carol", "confirm": "Carol"})
    assert wrong.status_code == 400 and "nothing was erased" in wrong.text
    assert carol.list()["data"]
    done = http.post(f"/ui/t/{a}/user/erase", data={"csrf": token, "id": "carol", "confirm": "carol"})
    assert done.status_code == 303 and "/audit?entry=audit_" in done.headers["location"]
    assert carol.list()["data"] == []
    log = http.get(done.headers["location"])
    pseudonym = Owner.of(proxy.app.state.runtime.secret, a, "carol").hash
    recorded = re.search(r'<section aria-labelledby="entry-h".*?</section>', log.text, re.DOTALL)[0]
    assert "Recorded: erase (ok)" in recorded and pseudonym in recorded
    assert re.search(r"<dt>memories</dt><dd>1</dd>", recorded)
    assert "Verified:" in log.text and "the chain is intact" in log.text


def test_live_figures_sample_the_metrics(proxy, tenants) -> None:
    a, _ = tenants
    proxy.app.state.ui_sampler = Sampler(min_interval=0)  # a sample on every read, not one per 2 s
    http = login(proxy)
    http.get("/ui/metrics")
    for _ in range(2):
        http.get(f"/ui/t/{a}/user", params={"id": "alice@example.com", "q": "tea"})
        charts = http.get("/ui/metrics/charts")
    assert charts.status_code == 200
    recall = re.search(r'id="chart-recall".*?</figure>', charts.text, re.DOTALL)[0]
    assert re.search(r'<strong class="figure">\d+\.\d ms</strong>', recall), recall
    assert "<polyline" in recall and 'role="img"' in recall
    assert re.search(r'id="chart-queue".*?<strong class="figure">0</strong>', charts.text, re.DOTALL)


def test_logout_ends_the_session_in_the_browser(proxy) -> None:
    http = login(proxy)
    token = csrf_of(http.get("/ui/tenants").text)
    out = http.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert 'memproxy_ui=""' in out.headers["set-cookie"]
    assert http.get("/ui/tenants").status_code == 401


def test_with_a_fixed_tenant_only_the_admin_token_opens_the_explorer(make_proxy) -> None:
    fixed = make_proxy(tenant="acme", admin_token=ADMIN)
    form = client(fixed).get("/ui/login")
    assert 'value="application"' not in form.text, "no key login offered: a key names no tenant here"
    http = client(fixed)
    csrf = re.search(r'name="login_csrf" value="([^"]+)"', http.get("/ui/login").text)[1]
    refused = http.post("/ui/login", data={"login_csrf": csrf, "token": KEY_A, "as": "application"})
    assert refused.status_code == 401 and "admin token only" in refused.text
    assert httpx.get(fixed.url + "/ui/t/acme", headers={"authorization": f"Bearer {KEY_A}"}).status_code == 401
    assert httpx.get(fixed.url + "/ui/t/acme", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # qdrant-client says so: there is none
def test_a_memory_layer_that_is_down_is_a_503_page_not_a_crash(make_proxy) -> None:
    from test_failures import closed_port

    down = make_proxy(admin_token=ADMIN, qdrant_url=f"http://127.0.0.1:{closed_port()}", single_replica=True)
    try:
        bearer = {"authorization": f"Bearer {ADMIN}"}
        for path in ("/ui/tenants", "/ui/t/acme", "/ui/t/acme/user?id=alice"):
            page = httpx.get(down.url + path, headers=bearer)
            assert page.status_code == 503, path
            assert "memory layer is unavailable" in page.text and "/readyz" in page.text
        assert httpx.get(down.url + "/ui/t/acme/audit", headers=bearer).status_code == 200, (
            "the audit log needs no Qdrant"
        )
    finally:
        down.stop()  # its retries would go on for the whole session


def test_a_tenant_with_many_users_is_paged(proxy) -> None:
    key = "sk-app-many"
    with Memory(proxy.url, api_key=key) as memory:
        for n in range(101):
            memory.user(f"user-{n:03}").remember(f"Has lucky number {n}")
    from proxy.ui.access import key_tenant

    tenant = key_tenant(key, proxy.app.state.settings, proxy.app.state.runtime.secret)
    http = login(proxy)
    first = http.get(f"/ui/t/{tenant}")
    assert "101 users by pseudonym" in first.text and "page 1 of 2" in first.text
    assert first.text.count("<tr>") - 1 == 100 and "Next page" in first.text and "Previous page" not in first.text
    second = http.get(f"/ui/t/{tenant}", params={"page": "2"})
    assert second.text.count("<tr>") - 1 == 1 and "Previous page" in second.text
    assert http.get(f"/ui/t/{tenant}", params={"page": "0"}).status_code == 400


def test_with_an_upstream_embedder_the_admin_token_never_goes_upstream(make_proxy, emulator) -> None:
    upstream = make_proxy(embedder="upstream", admin_token=ADMIN, llm_api_key="sk-operator")
    with Memory(upstream.url, api_key=KEY_A) as memory:
        memory.user("erin").remember("Collects vinyl records")
    from proxy.ui.access import key_tenant

    tenant = key_tenant(KEY_A, upstream.app.state.settings, upstream.app.state.runtime.secret)
    emulator.clear_requests()
    page = httpx.get(
        f"{upstream.url}/ui/t/{tenant}/user",
        params={"id": "erin", "q": "what does erin collect?"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert page.status_code == 200 and "Collects vinyl records" in page.text
    sent = [entry["headers"].get("authorization") for entry in emulator.requests("/v1/embeddings")]
    assert sent == ["Bearer sk-operator"], "the operator's upstream key embeds the query, never the admin token"
