"""End to end in headless Chromium (Debian's package, driven by Playwright): what a person does on the page."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="no chromium: install Debian's package (`apt-get install -y chromium`)")


@pytest.fixture()
def page(web_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 420, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))  # CSP violations land here
        page.console_errors = errors  # for a test that causes one on purpose to take it out
        yield page
        browser.close()
    assert errors == []


def open_chat(page, url):
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")


def send(page, text, replies_before):
    page.fill("#message", text)
    page.press("#message", "Enter")
    page.locator(".msg.bot[data-turn]").nth(replies_before).wait_for()  # no wait_for_function: CSP forbids eval
    page.wait_for_selector("#typing", state="detached")


def transcript(page):
    return [(row.get_attribute("class").split()[1], row.query_selector(".bubble").text_content())
            for row in page.query_selector_all("#log .msg")]


def test_chat_reload_and_new_conversation(page, web_server, tmp_path):
    open_chat(page, web_server.url)
    assert page.title().startswith("ErGo")
    assert "may be used to train the bot" in page.text_content("#privacy")  # ERGO_KEEP_FOR_TRAINING's default
    send(page, "hi there!", 0)
    assert page.text_content("#model") == "run"  # the bundle answering this conversation
    page.fill("#message", "<img src=x onerror=alert(1)> what do")  # shown as text, never parsed
    page.press("#message", "Shift+Enter")  # a new line, not a send
    page.type("#message", "you like to eat?")
    assert len(page.query_selector_all(".msg.user")) == 1
    page.press("#message", "Enter")
    page.locator(".msg.bot[data-turn]").nth(1).wait_for()
    page.wait_for_selector("#typing", state="detached")
    shown = transcript(page)
    assert [role for role, _ in shown] == ["user", "bot", "user", "bot"]
    assert shown[2][1] == "<img src=x onerror=alert(1)> what do\nyou like to eat?"
    assert page.query_selector("#log img") is None

    page.click(".msg.bot.last button[aria-label='Good reply']")
    page.wait_for_selector(".msg.bot.last button[aria-label='Good reply'][aria-pressed=true]")
    page.screenshot(path=str(tmp_path / "chat.png"))

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert transcript(page) == shown
    assert page.get_attribute(".msg.bot.last button[aria-label='Good reply']", "aria-pressed") == "true"

    with page.expect_response("**/api/regenerate") as regenerated:
        page.click(".msg.bot.last button[aria-label='Regenerate this reply']")
    assert regenerated.value.ok
    page.wait_for_selector("#typing", state="detached")
    assert len(transcript(page)) == 4

    page.click("#new-chat")
    page.wait_for_selector("#log .msg", state="detached")
    assert page.is_visible("#empty")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert transcript(page) == []


def test_settings_panel_offers_every_setting(page, web_server):
    from ergo.chatbot import SETTINGS

    open_chat(page, web_server.url)
    page.click("#settings-toggle")
    names = [el.get_attribute("name") for el in page.query_selector_all("#settings-fields [name]")]
    assert sorted(names) == sorted(SETTINGS)


def test_replies_come_by_the_stream_and_by_api_chat_where_the_stream_is_missing(page, web_server):
    posted = []
    page.on("request", lambda r: r.method == "POST" and posted.append(r.url.split("/", 3)[-1]))
    open_chat(page, web_server.url)
    with page.expect_response("**/api/chat/stream") as streamed:
        send(page, "hi there!", 0)
    assert streamed.value.ok and streamed.value.headers["content-type"].startswith("text/event-stream")
    assert posted == ["api/chat/stream"]
    first = transcript(page)
    assert [role for role, _ in first] == ["user", "bot"] and first[1][1].strip()

    # a server without the route (404): the page falls back to /api/chat, and the turn is kept once
    page.route("**/api/chat/stream", lambda route: route.fulfill(status=404, content_type="application/json",
                                                                 body='{"error": "not found"}'))
    with page.expect_response("**/api/chat") as whole:
        send(page, "where do you live?", 1)
    assert whole.value.ok and posted[-1] == "api/chat"
    page.console_errors[:] = [e for e in page.console_errors if "status of 404" not in e]  # the one routed above
    page.unroute("**/api/chat/stream")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert [role for role, _ in transcript(page)] == ["user", "bot", "user", "bot"]
    assert transcript(page)[:2] == first
