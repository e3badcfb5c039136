"""The operator console in a real browser: Debian's headless Chromium
driven by Selenium through Debian's chromedriver. Sign in with a one-time
link, see a held call with its arguments rendered as inert text, approve
it, watch the held call complete and the task's timeline show it; and
the refusals: a reused link, a POST without the CSRF token, an expired
session, a login as an undeclared name."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import lanyard
from conftest import APPROVER, CONSOLE_SESSION, Stack
from test_approval import call_waiting, wait_for_pending

#: Markup an agent could put in its arguments: it must render as text.
MARKUP = '<b id="bold">hi</b><script>document.title="pwned"</script><img src=x>'


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.fail("chromium and chromedriver are needed (Debian: apt install chromium chromium-driver)")
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def login_link(stack: Stack, *args: str) -> str:
    return stack.admin_cmd("console", "login", *args).strip()


def http(url: str, data: dict[str, str] | None = None, cookie: str = "") -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"cookie": cookie} if cookie else {})
    if body is not None:
        req.add_header("content-type", "application/x-www-form-urlencoded")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=15) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def test_approve_a_held_call_in_the_browser(stack: Stack, tool_port: int, browser: webdriver.Chrome) -> None:
    mail = {"to": "partner@outside.example", "body": MARKUP}
    with lanyard.task("report.generate", ["email.send"], intent="mail the partner <i>now</i>") as t:
        ctx = t.ssl_context()
        result: dict[str, Any] = {}
        held = threading.Thread(target=lambda: result.update(call_waiting(ctx, tool_port, mail)))
        held.start()
        approval_id = wait_for_pending(stack, t.id)

        link = login_link(stack, "--as", APPROVER)
        browser.get(link)
        assert browser.title == "Pending approvals - Lanyard"
        assert APPROVER in browser.find_element(By.ID, "who").text
        card = browser.find_element(By.ID, f"approval-{approval_id}")
        args = card.find_element(By.CLASS_NAME, "arguments")
        # The agent's markup is text: shown whole, no element made of it.
        assert MARKUP.replace('"', '\\"') in args.text or MARKUP in json.loads(args.text)["body"]
        assert browser.find_elements(By.ID, "bold") == []
        assert browser.find_elements(By.TAG_NAME, "script") == []
        assert browser.find_elements(By.TAG_NAME, "img") == []
        assert "<i>now</i>" in card.find_element(By.CLASS_NAME, "intent").text
        assert browser.title != "pwned"

        card.find_element(By.NAME, "reason").send_keys("partner mail is fine")
        card.find_element(By.CLASS_NAME, "approve").click()
        held.join(30)
        assert result.get("allow") is True, result
        assert browser.find_elements(By.ID, f"approval-{approval_id}") == []

        browser.get(f"{stack.console}/tasks/{t.id}")
        kinds = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#timeline .kind")]
        assert "task.begun" in kinds, kinds
        assert "approval.requested" in kinds and "approval.approved" in kinds, kinds
        assert "approval.used" in kinds, kinds
        rows = browser.find_element(By.ID, "timeline").text
        assert "partner mail is fine" in rows

        # The link was used: following it again is refused.
        browser.get(link)
        assert browser.find_elements(By.ID, "refused"), browser.page_source


def test_state_changes_need_the_session_and_its_csrf_token(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(login_link(stack, "--as", APPROVER))
    cookie = browser.get_cookie("lanyard_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    jar = f"lanyard_session={cookie['value']}"
    # A page with the session: fine. A POST without the token, or with
    # another: refused, whatever it asks.
    status, _ = http(f"{stack.console}/quarantines", cookie=jar)
    assert status == 200
    for form in ({}, {"csrf": "0" * 64}):
        status, page = http(f"{stack.console}/approvals/abc/approve", form, cookie=jar)
        assert status == 403 and "CSRF" in page, (status, page)
    # Without a session: sign in first.
    status, page = http(f"{stack.console}/", cookie="lanyard_session=" + "1" * 64)
    assert status == 401 and "signin" in page
    status, _ = http(f"{stack.console}/approvals/abc/approve", {"csrf": "x"})
    assert status == 401


def test_signing_out_ends_the_session(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(login_link(stack))
    browser.find_element(By.ID, "logout").click()
    browser.get(f"{stack.console}/quarantines")
    assert browser.find_elements(By.ID, "signin"), browser.page_source


def test_a_session_expires(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(login_link(stack))
    assert browser.title == "Pending approvals - Lanyard"
    time.sleep(CONSOLE_SESSION + 1)
    browser.get(f"{stack.console}/tasks")
    assert browser.find_elements(By.ID, "signin"), browser.page_source


def test_only_a_declared_approver_gets_a_link(stack: Stack) -> None:
    for name in ("user:mallory@example.com", "spiffe://example.org/agent/py"):
        with pytest.raises(AssertionError, match="not a declared approver"):
            login_link(stack, "--as", name)
