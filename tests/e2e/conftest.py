"""A real ``modelyard serve`` with the demo models, and headless Chromium (the machine's
``/usr/bin/chromium``, driven by Playwright) on its pages; each page is watched for console
errors, failed requests and requests that leave 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class Watched:
    page: object
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    allowed_errors: tuple[str, ...] = ()

    def check(self) -> None:
        errors = [e for e in self.errors if not any(a in e for a in self.allowed_errors)]
        assert not errors, errors
        assert not self.failed, self.failed
        assert not self.outside, self.outside


@pytest.fixture
def watched(browser: object) -> Iterator[Callable[..., Watched]]:
    made: list[tuple[object, Watched]] = []

    def open_page(url: str, *allowed_errors: str) -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        w = Watched(page, allowed_errors=allowed_errors)
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
