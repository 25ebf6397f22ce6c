"""A real headless Chromium (Debian's `chromium`, driven by Playwright) for the report tests.

Every request the page attempts, other than loading the report file itself, is
aborted and recorded; so are console errors and uncaught exceptions. A missing
browser fails the tests that need it: it never skips them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# What Chromium needs to run headless as root in a container, and to make no
# background requests of its own (updates, sync, QUIC probes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class OpenedReport:
    page: object
    requests: list[str] = field(default_factory=list)  # attempted, then aborted
    console_errors: list[str] = field(default_factory=list)

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector).strip()

    def number(self, selector: str) -> int:
        return int(self.text(selector).replace(",", ""))

    def slide_to(self, bin_: int) -> None:
        """Move the threshold slider as a user's drag does: set the value, fire `input`."""
        self.page.eval_on_selector("#threshold-slider",
                                   "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", bin_)

    def keep_top(self, percent: str) -> None:
        self.page.fill("#keep-top", percent)


@pytest.fixture(scope="module")  # Playwright's sync API keeps an event loop running until it stops:
def chromium():                   # stopped with the module, so later tests can run their own (asyncio.run)
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); "
                    "the report tests need a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh profile (--user-data-dir) of its own and removes it after.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_report(browser, path: Path) -> OpenedReport:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, service_workers="block")
    page = context.new_page()
    opened = OpenedReport(page)
    own = path.resolve().as_uri()

    def route(r):
        if r.request.url == own:
            return r.continue_()
        opened.requests.append(r.request.url)
        return r.abort()

    context.route("**/*", route)
    page.on("request", lambda request: request.url not in (own,) and not request.url.startswith("data:")
            and request.url not in opened.requests and opened.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and opened.console_errors.append(message.text))
    page.on("pageerror", lambda error: opened.console_errors.append(str(error)))
    page.goto(own)
    page.wait_for_load_state("load")
    return opened
