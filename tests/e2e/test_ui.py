"""The web page in a real browser, against a real server with the demo models."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import Watched, screenshot
from tests.integration.conftest import Server

pytestmark = pytest.mark.slow  # a browser and the demo models: minutes, left to CI

GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


def row(w: Watched, model: str) -> object:
    return w.page.locator(f'tr[data-model="{model}"]')


def test_ui_idle_page_asks_at_most_once_a_second(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{demo.url}/ui/")
    page = w.page
    row(w, GEMMA).wait_for()
    page.wait_for_timeout(1000)  # the first requests are done
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url))
    page.wait_for_timeout(10_000)
    assert len(sent) <= 10, sent


def test_ui_models_load_and_unload_with_the_memory_of_ps(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{demo.url}/")  # a browser is sent to /ui/
    page = w.page
    assert page.url.endswith("/ui/")
    for model in (GEMMA, MINILM):
        row(w, model).wait_for()
    gemma = row(w, GEMMA)
    badge = gemma.locator(".badge")
    gemma.get_by_role("button", name="Load").click()
    badge.filter(has_text="ready").wait_for(timeout=60_000)
    (entry,) = [m for m in demo.ps() if m["name"] == GEMMA]
    memory = entry["memory"]
    shown = gemma.locator(".bar[data-device=ram]").get_attribute("data-bytes")
    assert int(shown) == (memory["measured"] or memory["estimate"])["ram"]
    screenshot(page, "models")
    gemma.get_by_role("button", name="Pin").click()
    gemma.get_by_role("button", name="Unpin").wait_for()
    assert [m["pinned"] for m in demo.ps() if m["name"] == GEMMA] == [True]
    gemma.get_by_role("button", name="Unpin").click()
    gemma.get_by_role("button", name="Pin").wait_for()
    assert [m["pinned"] for m in demo.ps() if m["name"] == GEMMA] == [False]
    gemma.get_by_role("button", name="Unload").click()
    badge.filter(has_text="stopped").wait_for(timeout=30_000)
    assert all(m["name"] != GEMMA for m in demo.ps())


def test_ui_chat_streams_and_stop_frees_the_slot(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{demo.url}/ui/#/playground")
    page = w.page
    page.get_by_label("Max tokens").fill("400")
    page.get_by_label("Message", exact=False).fill("Once upon a time, in a small village,")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant")
    page.wait_for_function(
        "() => (document.querySelector('.msg.assistant .text')?.textContent ?? '').length > 20",
        timeout=60_000,
    )
    assert "tokens/s" in page.locator(".stats").text_content()
    screenshot(page, "playground")
    runner = demo.runner(GEMMA)
    slots = f"{runner.url}/slots"
    assert any(s["is_processing"] for s in httpx.get(slots, headers=runner.headers).json())
    page.get_by_role("button", name="Stop").click()
    stopped = time.monotonic()
    while any(s["is_processing"] for s in httpx.get(slots, headers=runner.headers).json()):
        assert time.monotonic() - stopped < 1.0, "the slot is still busy 1 s after Stop"
        time.sleep(0.02)
    assert answer.text_content()
    page.locator(".stats", has_text="stopped").wait_for()


def test_ui_stop_before_the_first_token_leaves_no_empty_turn(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    """Stopped while the model still loads: no empty answer stays (shown, saved or sent
    next turn); the question goes back into the box, and sending it again answers it."""
    httpx.post(f"{demo.url}/api/unload", json={"model": GEMMA}, timeout=60).raise_for_status()
    w = watched(f"{demo.url}/ui/#/playground")
    page = w.page
    page.evaluate("localStorage.removeItem('modelyard.chat')")
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Message", exact=False).fill("Say hello")
    page.get_by_role("button", name="Send").click()
    page.locator(".msg.assistant.pending").wait_for()
    page.locator(".stats", has_text=f"Loading {GEMMA}").wait_for()
    page.get_by_role("button", name="Stop").click()
    page.locator(".stats", has_text="Stopped before the first token").wait_for()
    assert page.locator(".msg").count() == 0
    assert page.get_by_label("Message", exact=False).input_value() == "Say hello"
    assert page.evaluate("localStorage.getItem('modelyard.chat')") == "[]"
    page.get_by_role("button", name="Send").click()
    page.locator(".stats", has_text="tokens/s").wait_for(timeout=60_000)
    page.wait_for_function("() => !document.querySelector('button.primary').disabled")
    history = page.evaluate("JSON.parse(localStorage.getItem('modelyard.chat'))")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "Say hello"
    assert history[1]["content"]
    page.get_by_role("button", name="Regenerate").click()
    page.locator(".msg.pending").wait_for(state="detached", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('button.primary').disabled")
    assert page.locator(".msg").count() == 2  # the answer replaced, not added


def test_ui_completion_mode_streams_text_on_from_the_prompt(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{demo.url}/ui/#/playground?tab=complete")
    page = w.page
    page.get_by_label("Text to continue").fill("The capital of France is")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Temperature").fill("0")
    page.get_by_role("button", name="Complete").click()
    page.locator(".stats", has_text="tokens/s").wait_for(timeout=60_000)
    page.wait_for_function("() => !document.querySelector('.completion[aria-busy]')")
    generated = page.locator(".completion .generated").text_content()
    assert generated.strip()
    assert page.locator(".completion").text_content().startswith("The capital of France is")
    screenshot(page, "complete")


def test_ui_embeddings_say_the_model_is_loading(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    httpx.post(f"{demo.url}/api/unload", json={"model": MINILM}, timeout=60).raise_for_status()
    w = watched(f"{demo.url}/ui/#/playground?tab=embeddings")
    page = w.page
    page.get_by_role("button", name="Embed").click()
    page.locator(".stats", has_text=f"Loading {MINILM}").wait_for()
    assert page.get_by_role("button", name="Embedding…").is_disabled()
    page.locator("table.matrix").wait_for(timeout=120_000)
    assert page.get_by_role("button", name="Embed").is_enabled()


def test_ui_rerank_ranks_the_matching_document_first(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{demo.url}/ui/#/playground?tab=rerank")
    page = w.page
    page.get_by_label("Query").fill("Which animal purrs?")
    page.get_by_label("Documents", exact=False).fill(
        "The stock market closed higher today.\nCats purr when they are content.\n"
        "Paris is the capital of France."
    )
    page.get_by_role("button", name="Rank").click()
    first = page.locator("ol.ranked li").first
    first.wait_for(timeout=60_000)
    assert first.text_content().startswith("Cats purr")
    screenshot(page, "rerank")


def test_ui_events_show_an_eviction_and_logs_a_runner_line(
    demo: Server, watched: Callable[..., Watched]
) -> None:
    w = watched(f"{demo.url}/ui/#/events")
    page = w.page
    httpx.post(f"{demo.url}/api/load", json={"model": MINILM}, timeout=120).raise_for_status()
    httpx.post(f"{demo.url}/api/unload", json={"model": MINILM}, timeout=60).raise_for_status()
    evicted = page.locator('tr[data-kind="evicted"]', has_text=MINILM)
    evicted.first.wait_for(timeout=30_000)
    assert "manual" in evicted.first.text_content()
    screenshot(page, "events")
    page.goto(f"{demo.url}/ui/#/logs")
    page.locator("select[name=source]").select_option(GEMMA)
    count = (
        "() => (document.querySelector('.log').textContent.match(/stop processing/g) ?? []).length"
    )
    page.wait_for_timeout(500)
    before = page.evaluate(count)
    httpx.post(
        f"{demo.url}/v1/chat/completions",
        timeout=120,
        json={
            "model": GEMMA,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
    ).raise_for_status()
    # llama.cpp logs each request it served: the new line shows up while the page follows.
    page.wait_for_function(f"() => ({count})() > {before}", timeout=30_000)
    screenshot(page, "logs")


@pytest.mark.parametrize(
    "page_name", ["models", "playground", "activity", "events", "logs", "usage", "keys"]
)
def test_ui_every_page_opens_cleanly(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched], page_name: str
) -> None:
    """No console error, no failed request, nothing fetched from elsewhere (checked by the
    fixture), and the page's heading, as an admin on a server with keys."""
    server, keys = keyed
    w = watched(f"{server.url}/ui/#/{page_name}", UNAUTHENTICATED)
    log_in(w, keys["admin"])
    w.page.get_by_role("heading", level=1).wait_for()
    w.page.wait_for_timeout(500)
    assert not w.page.get_by_role("alert").filter(has_text="Error").count()
    if page_name in ("activity", "usage"):
        screenshot(w.page, page_name)


@pytest.fixture(scope="module")
def keyed(server_factory: Callable[..., Server]) -> tuple[Server, dict[str, str]]:
    server = server_factory(None, env={"MODELYARD_AUTH": "keys"})
    admin = next(line.strip() for line in server.log.read_text().splitlines()
                 if line.strip().startswith("my-"))  # fmt: skip
    headers = {"Authorization": f"Bearer {admin}"}
    keys = {"admin": admin}
    for name, body in (("user", {"role": "user", "models": [MINILM]}),
                       ("monitor", {"role": "monitor"})):  # fmt: skip
        made = httpx.post(f"{server.url}/api/keys", json={"name": name, **body}, headers=headers)
        keys[name] = made.raise_for_status().json()["key"]
    return server, keys


UNAUTHENTICATED = "status of 401"  # the first /api/me, before logging in


def log_in(w: Watched, key: str) -> None:
    page = w.page
    page.get_by_role("dialog").wait_for()
    page.get_by_label("API key").fill(key)
    page.get_by_role("dialog").get_by_role("button", name="Log in").click()
    page.get_by_role("dialog").wait_for(state="hidden")


def test_ui_with_keys_shows_what_each_role_may_do(
    keyed: tuple[Server, dict[str, str]], watched: Callable[..., Watched]
) -> None:
    server, keys = keyed
    w = watched(f"{server.url}/ui/", UNAUTHENTICATED)
    screenshot(w.page, "login")
    log_in(w, keys["user"])
    page = w.page
    row(w, MINILM).wait_for()
    assert page.locator("tr[data-model]").count() == 1
    assert page.get_by_role("button", name="Load").count() == 0
    assert page.get_by_role("link", name="Playground").is_visible()
    assert not page.get_by_role("link", name="Events").is_visible()
    page.goto(f"{server.url}/ui/#/playground")  # its one model embeds: it may not chat
    page.get_by_role("alert").filter(has_text="No model you may use does chat").wait_for()
    assert page.get_by_role("button", name="Send").is_disabled()
    page.goto(f"{server.url}/ui/#/keys")  # a key makes no keys: the page says how to
    page.get_by_text("Log in with your user name and password to make keys").wait_for()
    assert page.get_by_role("button", name="Make a key").count() == 0
    page.goto(f"{server.url}/ui/")

    m = watched(f"{server.url}/ui/", UNAUTHENTICATED)
    log_in(m, keys["monitor"])
    row(m, GEMMA).wait_for()
    assert not m.page.get_by_role("link", name="Playground").is_visible()
    m.page.goto(f"{server.url}/ui/#/playground")  # not even by its address
    m.page.get_by_role("alert").filter(has_text="may not use this page").wait_for()
    assert m.page.get_by_role("button", name="Send").count() == 0
    assert m.page.get_by_role("button", name="Load").count() == 0

    a = watched(f"{server.url}/ui/#/keys", UNAUTHENTICATED)
    log_in(a, keys["admin"])
    a.page.get_by_label("Name", exact=True).fill("from-the-page")
    a.page.get_by_role("button", name="Make a key").click()
    made = a.page.locator("[data-key]")
    made.wait_for()
    key = made.text_content()
    assert (
        httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )
    new = a.page.locator("tr[data-key-id]", has_text="from-the-page")
    new.get_by_role("button", name="Edit").click()
    editor = a.page.locator("tr[data-editor]")  # a row of its own, below the key's
    editor.get_by_label("rpm").fill("7")
    editor.get_by_label("models").fill(MINILM)
    editor.get_by_role("button", name="Save").click()
    a.page.locator("tr[data-key-id]", has_text="7 rpm").wait_for()
    listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in listed.json()["data"]] == [MINILM]
    a.page.locator("main").get_by_label("User name", exact=True).fill("walt")
    a.page.locator("main").get_by_label("Password", exact=True).fill("walt-password")
    a.page.get_by_role("button", name="Add user").click()
    a.page.locator('tr[data-user="walt"]').wait_for()  # fmt: skip
    screenshot(a.page, "keys")
