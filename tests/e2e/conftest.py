"""A real ``modelyard serve`` with the demo models, and headless Chromium (the machine's
``/usr/bin/chromium``, driven by Playwright) on its pages; each page is watched for console
errors, failed requests and requests that leave 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import axe_playwright_python
import pytest

from tests.integration.conftest import Server, no_orphan_runners, server_factory

__all__ = ["no_orphan_runners", "server_factory"]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: sh scripts/test-services --slow installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1400, "height": 900}
AXE = Path(axe_playwright_python.__file__).with_name("axe.min.js")


@dataclass
class Watched:
    page: object
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    allowed_errors: tuple[str, ...] = ()
    offline: bool = False
    """The test stops the server under the page: requests that could not connect are
    expected (and their console lines)."""

    def check(self) -> None:
        allowed = self.allowed_errors + (("ERR_CONNECTION_REFUSED",) if self.offline else ())
        errors = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not errors, errors
        failed = [f for f in self.failed if not (self.offline and "ERR_CONNECTION" in f)]
        assert not failed, failed
        assert not self.outside, self.outside

    def axe(self) -> list[str]:
        """axe-core's serious and critical violations on the page as it is now."""
        self.page.add_script_tag(path=str(AXE))
        found = self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " where: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
        )
        return [f"{v['id']}: {v['help']} at {v['where']}" for v in found
                if v["impact"] in ("serious", "critical")]  # fmt: skip


@pytest.fixture
def watched(browser: object) -> Iterator[Callable[..., Watched]]:
    made: list[tuple[object, Watched]] = []

    def open_page(
        url: str, *allowed_errors: str, viewport: dict[str, int] = DESKTOP, offline: bool = False
    ) -> Watched:
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        w = Watched(page, allowed_errors=allowed_errors, offline=offline)
        page.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: w.errors.append(str(e)))

        def failed(request: object) -> None:
            failure = request.failure or ""
            if "ERR_ABORTED" not in failure:  # a stream we stopped, a page we left
                w.failed.append(f"{request.url} {failure}")

        page.on("requestfailed", failed)
        page.on("request", lambda r: None if r.url.startswith(
            ("http://127.0.0.1", "data:", "blob:")) else w.outside.append(r.url))  # fmt: skip
        page.goto(url)
        made.append((context, w))
        return w

    yield open_page
    for context, w in made:
        context.close()
        w.check()


def screenshot(page: object, name: str) -> None:
    """Written to $UI_SCREENSHOTS (the README links docs/ui/) when it is set."""
    directory = os.environ.get("UI_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def demo(server_factory: Callable[..., Server]) -> Server:
    return server_factory(None)
