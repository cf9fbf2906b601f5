"""The Models page with a big catalog (search, filter, sort, 1,000 entries) and on a phone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import PHONE, Watched, screenshot
from tests.e2e.test_ui import GEMMA, MINILM, row
from tests.integration.conftest import Server, gemma

pytestmark = pytest.mark.slow  # a browser and a real server: left to CI

COUNT = 1000


@pytest.fixture(scope="module")
def big(server_factory: Callable[..., Server]) -> Server:
    """1,000 entries (the demo's GGUF under as many names, as a team's catalog of variants
    would be), and the demo models."""
    path = gemma()
    config = "".join(
        f'[models.team-{n:04d}]\npath = "{path}"\naliases = ["variant-{n:04d}"]\n'
        for n in range(COUNT)
    )
    return server_factory(config, demo=True)


def test_ui_search_filter_and_sort_a_catalog_of_1000(
    big: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{big.url}/ui/")
    page = w.page
    page.locator("p[role=status]", has_text=f"{COUNT + 2} models").wait_for(timeout=30_000)
    # At most a screenful drawn at once; the rest behind "Show more".
    assert page.locator("tr[data-model]").count() == 200
    page.get_by_role("button", name="Show 200 more").click()
    assert page.locator("tr[data-model]").count() == 400
    search = page.get_by_label("Search")
    search.fill("variant-0421")  # an alias finds its model
    page.locator("tr[data-model]").first.wait_for()
    assert page.locator("tr[data-model]").all_text_contents()[0].startswith("team-0421")
    assert page.locator("tr[data-model]").count() == 1
    search.fill("minilm")
    row(w, MINILM).wait_for()
    assert page.locator("tr[data-model]").count() == 1
    search.fill("")
    page.locator("select[name=kind]").select_option("embedding")
    assert page.locator("tr[data-model]").count() == 1
    page.locator("select[name=kind]").select_option("")
    search.fill("no such model")
    page.get_by_text("No model matches.").wait_for()
    search.fill("")
    row(w, GEMMA).get_by_role("button", name="Load").click()
    row(w, GEMMA).locator(".badge", has_text="ready").wait_for(timeout=60_000)
    page.get_by_role("button", name="State", exact=True).click()  # sort by state
    assert page.locator("tr[data-model]").first.get_attribute("data-model") == GEMMA
    page.locator("select[name=state]").select_option("loaded")
    assert [page.locator("tr[data-model]").first.get_attribute("data-model")] == [GEMMA]
    screenshot(page, "catalog")
    row(w, GEMMA).get_by_role("button", name="Unload").click()
    row(w, GEMMA).wait_for(state="detached", timeout=30_000)


def test_ui_on_a_phone_every_action_stays_on_the_screen(
    big: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{big.url}/ui/", viewport=PHONE)
    page = w.page
    page.get_by_label("Search").fill(GEMMA)
    line = row(w, GEMMA)
    line.wait_for()
    for name in ("Load", "Pin", "Details"):
        button = line.get_by_role("button", name=name)
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"], name
    for label in ("Queue", "Expires", "Memory"):  # every column, as a line of its card
        assert line.locator(f'td[data-label="{label}"]').is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "models-phone")
