"""The web page when things go wrong: the server restarts under it, a model's file is
corrupt, the login is dismissed, a key is revoked, a destructive click."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Watched, screenshot
from tests.e2e.test_ui import GEMMA, UNAUTHENTICATED, keyed, log_in, row
from tests.hubserver import FakeHub
from tests.integration.conftest import HUB_REPO, Server, gemma, hub

__all__ = ["hub", "keyed"]

pytestmark = pytest.mark.slow  # a browser and real servers: left to CI


@pytest.fixture(scope="module")
def broken(
    server_factory: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory
) -> Server:
    """The demo models and two that cannot load: a file that is not a GGUF, and one cut
    short after its header's first bytes."""
    files = tmp_path_factory.mktemp("files")
    (files / "noise.gguf").write_bytes(b"not a model at all" * 100)
    (files / "cut.gguf").write_bytes(gemma().read_bytes()[:64])
    config = "".join(
        f'[models.{name}]\npath = "{files / name}.gguf"\n' for name in ("noise", "cut")
    )
    return server_factory(config, demo=True)


SAID = """() => {
  const badge = document.getElementById("conn");
  window.said = [];
  new MutationObserver(() => window.said.push(`${badge.dataset.state}: ${badge.textContent}`))
    .observe(badge, { attributes: true, childList: true, characterData: true, subtree: true });
}"""


def test_ui_comes_back_by_itself_after_the_server_restarts(
    broken: Server, watched: Callable[..., Watched]
) -> None:
    """Stopped under an open page: the header says so and the data is dimmed; started again,
    the page says it reconnected, reads the catalog again and the Events page catches up
    with what happened while it was away."""
    w = watched(f"{broken.url}/ui/", offline=True)
    page = w.page
    row(w, GEMMA).wait_for()
    events = watched(f"{broken.url}/ui/#/events", offline=True)
    events.page.get_by_role("heading", name="Events").wait_for()
    # What the connection badge says, every change of it: "Reconnected" shows for 5 s,
    # and the port listens (so the page reconnects) before the server has fully started.
    for p in (page, events.page):
        p.evaluate(SAID)
    broken.stop()
    for p in (page, events.page):
        p.locator('#conn[data-state="down"]', has_text="unreachable").wait_for(timeout=15_000)
    assert page.evaluate("document.body.classList.contains('offline')")
    screenshot(page, "offline")
    broken.start()
    httpx.post(f"{broken.url}/api/load", json={"model": GEMMA}, timeout=120).raise_for_status()
    for p in (page, events.page):
        p.wait_for_function("window.said.includes('up: Reconnected')", timeout=15_000)
    row(w, GEMMA).locator(".badge", has_text="ready").wait_for(timeout=15_000)
    assert not page.evaluate("document.body.classList.contains('offline')")
    # The load happened while the Events page was reconnecting, or just after: either way
    # it shows, once.
    loaded = events.page.locator('tr[data-kind="load_finished"]', has_text=GEMMA)
    loaded.first.wait_for(timeout=15_000)
    events.page.wait_for_timeout(1500)
    assert loaded.count() == 1
    httpx.post(f"{broken.url}/api/unload", json={"model": GEMMA}, timeout=60).raise_for_status()


def test_ui_a_corrupt_model_shows_failed_with_its_reason_and_a_retry(
    broken: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{broken.url}/ui/", "status of 503")  # the loads that failed, as they should
    page = w.page
    for name, reason in (("noise", "not a GGUF file"), ("cut", "GGUF header")):
        line = row(w, name)
        line.get_by_role("button", name="Load").click()
        line.locator('.badge[data-state="failed"]').wait_for(timeout=15_000)
        assert reason in line.locator(".reason").text_content()
        assert line.get_by_role("button", name="Retry").is_visible()
    page.locator("select[name=state]").select_option("failed")
    assert page.locator("tr[data-model]").count() == 2
    screenshot(page, "failed")
    # A model shows failed until it is unloaded (or loads): Unload clears it.
    httpx.post(f"{broken.url}/api/unload", json={"model": "noise"}, timeout=30).raise_for_status()
    listed = httpx.get(f"{broken.url}/api/models").json()["models"]
    assert [m["state"] for m in listed if m["name"] == "noise"] == ["stopped"]
    row(w, "noise").wait_for(state="detached", timeout=30_000)  # the page follows
    page.locator("select[name=state]").select_option("")
    row(w, "noise").locator('.badge[data-state="stopped"]').wait_for()


def test_ui_details_open_once_and_close_again(
    broken: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{broken.url}/ui/")
    page = w.page
    details = row(w, GEMMA).get_by_role("button", name="Details")
    for _ in range(3):  # a second click closes what the first opened; no box piles up
        details.click()
        page.locator(f'tr[data-details="{GEMMA}"] dl.facts').wait_for()
        assert page.locator("tr.details").count() == 1
        assert "Q4_K_M" in page.locator("tr.details").text_content()
        details.click()
        page.locator("tr.details").wait_for(state="detached")
    assert page.locator("tr[data-model]").nth(0).locator("td").count() == 7


def test_ui_pull_from_the_page_then_delete_after_a_confirmation(
    server_factory: Callable[..., Server], hub: FakeHub, watched: Callable[..., Watched]
) -> None:
    server = server_factory('[server]\nreload_interval = "0"\n', env={"HF_ENDPOINT": hub.url})
    w = watched(f"{server.url}/ui/")
    page = w.page
    page.get_by_label("Pull a model from the hub").fill(f"{HUB_REPO}:Q4_K_M")
    page.get_by_role("button", name="Pull").click()
    page.get_by_role("button", name="Pull").wait_for(timeout=60_000)  # "Pulling…" is over
    pulled = page.locator("tr[data-model]", has_text="gemma-3-270m-GGUF")
    pulled.wait_for(timeout=15_000)
    name = pulled.get_attribute("data-model")
    pulled.get_by_role("button", name="Details").click()
    details = page.locator(f'tr[data-details="{name}"]')
    details.locator("dl.facts").get_by_text(f"{HUB_REPO}:Q4_K_M").wait_for()
    details.get_by_role("button", name="Delete files").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert name in httpx.get(f"{server.url}/v1/models").text  # cancelled: still there
    details.get_by_role("button", name="Delete files").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    pulled.wait_for(state="detached", timeout=30_000)
    assert name not in httpx.get(f"{server.url}/v1/models").text
    assert not list(server.models_dir.rglob("*.gguf"))


def test_ui_escape_on_login_says_how_to_log_in(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched]
) -> None:
    server, keys = keyed
    w = watched(f"{server.url}/ui/", UNAUTHENTICATED)
    page = w.page
    page.get_by_role("dialog").wait_for()
    page.keyboard.press("Escape")
    page.get_by_text("This server needs a key or a login").wait_for()
    page.locator("#page").get_by_role("button", name="Log in").click()
    log_in(w, keys["admin"])
    row(w, GEMMA).wait_for()


def test_ui_a_revoked_key_brings_the_login_back_with_the_reason(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched]
) -> None:
    server, keys = keyed
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    made = httpx.post(f"{server.url}/api/keys", json={"name": "soon-gone", "role": "monitor"},
                      headers=admin).raise_for_status().json()  # fmt: skip
    w = watched(f"{server.url}/ui/", UNAUTHENTICATED, "status of 401")
    log_in(w, made["key"])
    row(w, GEMMA).wait_for()
    httpx.delete(f"{server.url}/api/keys/{made['id']}", headers=admin).raise_for_status()
    w.page.goto(f"{server.url}/ui/#/events")  # the page's next request is refused
    dialog = w.page.get_by_role("dialog")
    dialog.wait_for()
    assert "revoked" in dialog.get_by_role("alert").text_content()
    assert w.page.get_by_label("API key").input_value() == ""


def keys_page_as_admin(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched]
) -> Watched:
    server, keys = keyed
    w = watched(f"{server.url}/ui/#/keys", UNAUTHENTICATED)
    log_in(w, keys["admin"])
    return w


def test_ui_revoke_and_remove_ask_first_and_the_last_admin_key_offers_no_revoke(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched]
) -> None:
    page = keys_page_as_admin(keyed, watched).page
    page.get_by_label("Name", exact=True).fill("to-revoke")
    page.get_by_role("button", name="Make a key").click()
    line = page.locator("tr[data-key-id]", has_text="to-revoke")
    line.wait_for()
    line.get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(300)
    assert "enabled" in line.text_content()  # cancelled: nothing happened
    line.get_by_role("button", name="Revoke").click()
    screenshot(page, "confirm")
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    page.locator("tr[data-key-id]", has_text="to-revoke").filter(has_text="revoked").wait_for()
    # The server's own admin key is the only admin key: no Revoke button on it.
    admins = page.locator("tr[data-key-id]").filter(has_text="admin").filter(has_text="enabled")
    assert admins.count() == 1
    assert admins.get_by_role("button", name="Revoke").count() == 0
    page.locator("main").get_by_label("User name", exact=True).fill("temp")
    page.locator("main").get_by_label("Password", exact=True).fill("temp-password")
    page.get_by_role("button", name="Add user").click()
    user = page.locator('tr[data-user="temp"]')
    user.get_by_role("button", name="Remove").click()
    page.get_by_role("dialog").get_by_role("button", name="Remove").click()
    user.wait_for(state="detached")


def test_ui_edit_opens_one_editor_and_closes_it(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched]
) -> None:
    page = keys_page_as_admin(keyed, watched).page
    line = page.locator("tr[data-key-id]", has_text="monitor").first
    for _ in range(2):
        line.get_by_role("button", name="Edit").click()
        page.locator("tr[data-editor]").wait_for()
        assert page.locator("tr[data-editor]").count() == 1
        line.get_by_role("button", name="Edit").click()
        page.locator("tr[data-editor]").wait_for(state="detached")


def test_ui_usage_says_when_since_is_not_a_time(
    broken: Server, watched: Callable[..., Watched]
) -> None:
    """Keys off: Usage is there (the ledger still counts), Keys says how to turn keys on."""
    demo = broken  # any server without keys
    w = watched(f"{demo.url}/ui/#/usage", "status of 400")
    page = w.page
    page.get_by_role("heading", name="Usage").wait_for()
    page.get_by_label("Since", exact=False).fill("last tuesday")
    page.get_by_label("Since", exact=False).press("Enter")
    page.get_by_label("Since", exact=False).dispatch_event("change")
    page.get_by_role("alert").filter(has_text="since").wait_for()
    assert page.locator("main table").count() == 0
    page.goto(f"{demo.url}/ui/#/keys")
    page.get_by_text("This server runs without keys").wait_for()
    assert not page.get_by_text("may not use this page").count()


def test_ui_every_page_has_no_serious_accessibility_violation(
    broken: Server, watched: Callable[..., Watched], tmp_path: Path
) -> None:
    for viewport in ({"width": 1400, "height": 900}, {"width": 390, "height": 844}):
        w = watched(f"{broken.url}/ui/", viewport=viewport)
        page = w.page
        for name in ("models", "playground", "activity", "events", "logs", "usage", "keys"):
            page.goto(f"{broken.url}/ui/#/{name}")
            page.get_by_role("heading", level=1).wait_for()
            page.wait_for_timeout(300)
            found = w.axe()
            assert found == [], (name, viewport, found)
