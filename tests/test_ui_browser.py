"""The memory explorer in a real headless Chromium (Debian's, driven by Playwright): an operator logs in,
browses to a user, runs a query, edits and deletes a memory, erases the user, and reads the live figures.

Screenshots go to ``MEMPROXY_UI_SCREENSHOTS`` (default: the test's tmp dir). With
``MEMPROXY_UI_README_SCREENSHOT=1`` the user page is also saved as ``tests/screenshots/explorer.png``.
Without Chromium (or Playwright) the tests skip and say why, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from proxy.client import Memory

ADMIN = "op-browser-8c2e5a7f1d3b9e4c"
KEY = "sk-browser-app"
README_SHOT = Path(__file__).parent / "screenshots" / "explorer.png"


def chromium() -> str:
    """Debian's chromium, or a skip (a failure under CI) saying what is missing."""
    problem = None
    path = os.environ.get("MEMPROXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[test]')"
    if problem is None and not os.access(path, os.X_OK):
        problem = f"no Chromium at {path} (apt-get install chromium, or set MEMPROXY_CHROMIUM)"
    if problem is None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"the explorer's browser tests must run under CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def proxy(make_proxy):
    proxy = make_proxy(admin_token=ADMIN)
    with Memory(proxy.url, api_key=KEY) as memory:
        dana = memory.user("dana")
        dana.remember("Lives in Porto, near the river")
        dana.remember("Is vegetarian", kind="preference")
        dana.remember("Has a meeting with the bank on Friday", kind="temporary", ttl_seconds=7 * 86400)
        dana.remember("Plays padel on Sundays")
    return proxy


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("MEMPROXY_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page, name: str) -> Path:
        target = folder / f"{name}.png"
        page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 1000
        return target

    return shoot


@pytest.fixture
def page(browser, proxy):
    context = browser.new_context(base_url=proxy.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []  # console errors (a CSP violation is one) and uncaught exceptions
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def log_in(page) -> None:
    page.goto("/ui/")
    assert page.url.endswith("/ui/login?next=%2Fui%2F")
    page.get_by_label("Token", exact=True).fill(ADMIN)
    page.get_by_label("Token", exact=True).press("Enter")  # the keyboard submits the form
    page.get_by_role("heading", name="Tenants", level=1).wait_for()


def test_an_operator_browses_queries_edits_deletes_and_erases(page, proxy, shots) -> None:
    from playwright.sync_api import expect

    log_in(page)
    shots(page, "1-tenants")
    page.get_by_role("link", name="Audit log").first.wait_for()
    page.locator("table a code").first.click()
    page.get_by_role("heading", name="Users").wait_for()
    page.get_by_label("User id", exact=True).fill("dana")
    page.get_by_role("button", name="Open user").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("User dana")
    expect(page.locator("#memories tbody tr")).to_have_count(4)

    page.get_by_label("Query (a user message)").fill("Where does Dana live?")
    page.get_by_role("button", name="Recall").click()
    expect(page.locator("#block")).to_contain_text("Porto")
    expect(page.locator("#terms thead")).to_contain_text("Recency")
    expect(page.locator("#terms tbody tr").first).to_contain_text("Porto")
    user_page = shots(page, "2-user-query")
    if os.environ.get("MEMPROXY_UI_README_SCREENSHOT") == "1":
        README_SHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(README_SHOT), full_page=False)
    assert user_page.exists()

    page.get_by_role("link", name="Plays padel on Sundays").click()
    page.get_by_label("Text", exact=True).fill("Plays tennis on Sundays")
    page.get_by_label("Kind", exact=True).fill("preference")
    page.get_by_label("Never expires").check()
    page.get_by_label("Reason (kept in the history)").fill("switched sports")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.locator(".memory-text")).to_have_text("Plays tennis on Sundays")
    expect(page.locator(".history")).to_contain_text("Plays padel on Sundays")
    expect(page.locator(".history")).to_contain_text("switched sports")
    shots(page, "3-memory-edited")

    page.get_by_label("Reason", exact=True).fill("asked by dana")
    page.get_by_role("button", name="Delete this memory").click()
    expect(page.get_by_role("status")).to_contain_text("Memory deleted")
    expect(page.locator("#memories tr.tombstone")).to_contain_text("Plays tennis on Sundays")
    with Memory(proxy.url, api_key=KEY) as memory:
        live = [m["text"] for m in memory.user("dana").list()["data"]]
    assert "Plays tennis on Sundays" not in live and len(live) == 3

    page.get_by_role("link", name="Erase this user…").click()
    page.get_by_label("Type the user id to confirm").fill("Dana")
    page.get_by_role("button", name="Erase this user").click()
    expect(page.get_by_role("alert")).to_contain_text("nothing was erased")
    page.errors.clear()  # that page is a 400, which the console reports
    page.get_by_label("Type the user id to confirm").fill("dana")
    page.get_by_role("button", name="Erase this user").click()
    expect(page.get_by_role("heading", level=2).first).to_have_text("Recorded: erase (ok)")
    expect(page.locator("#verify")).to_contain_text("the chain is intact")
    expect(page.locator("#entry")).to_contain_text("memories")
    shots(page, "4-erased-audit")
    with Memory(proxy.url, api_key=KEY) as memory:
        assert memory.user("dana").list()["data"] == []
    assert page.errors == [], "no console error, no CSP violation"


def test_keyboard_focus_is_visible_and_the_live_figures_refresh(page, shots) -> None:
    from playwright.sync_api import expect

    log_in(page)
    page.goto("/ui/metrics")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "focus is visible"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    expect(page.locator("#chart-recall figcaption")).to_contain_text("Recall latency")
    expect(page.locator("#chart-queue svg[role=img] title")).to_contain_text("Queue depth")
    expect(page.locator("#charts")).to_have_attribute("data-updated", re.compile(r"^\d+$"), timeout=15_000)  # polled
    shots(page, "5-live-figures")
    assert page.errors == [], "no console error, no CSP violation"
