"""Server-side failures are logged, but a client retrying cannot flood the log."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from modelyard.api import errors
from modelyard.errors import LoadFailedError


def test_errors_same_failure_logged_once_per_window(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(errors.time, "monotonic", lambda: now[0])
    throttle = errors._Throttle(window=10.0)
    backing_off = LoadFailedError("Model 'm' failed to load and is backing off for 3s more")
    with caplog.at_level(logging.WARNING, logger="modelyard.api.errors"):
        for _ in range(10_000):
            throttle.warn(backing_off)
        throttle.warn(LoadFailedError("another failure"))
        now[0] += 11
        throttle.warn(backing_off)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("LoadFailedError: Model 'm' failed to load")
    assert lines[1] == "LoadFailedError: another failure"
    assert lines[2].endswith("(and 9999 more like it)")


async def test_errors_405_names_the_allowed_methods(make_harness: Callable) -> None:
    async with make_harness() as h:
        wrong = await h.call("/v1/chat/completions", method="GET")
        assert wrong.status == 405
        assert wrong.headers["allow"] == "POST"
        assert wrong.json()["error"]["code"] == "method_not_allowed"
        listing = await h.call("/v1/models", {}, method="POST")
        assert listing.status == 405
        assert "GET" in listing.headers["allow"]


async def test_docs_page_works_offline(make_harness: Callable) -> None:
    """``/docs`` is Swagger UI served from this server, no file from another site, in a
    version that renders the OpenAPI 3.1 schema FastAPI writes."""
    import re

    async with make_harness() as h:
        page = await h.call("/docs", method="GET")
        assert page.status == 200
        html = page.body.decode()
        sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert len(sources) == 4  # script, style sheet, icon, schema
        assert all(s.startswith("/") for s in sources), sources
        for source in sources:
            answer = await h.call(source, method="GET")
            assert answer.status == 200, source
        script = await h.call("/docs/assets/swagger-ui-bundle.js", method="GET")
        assert b"isOAS31" in script.body  # Swagger UI 5: OpenAPI 3.1
        schema = (await h.call("/openapi.json", method="GET")).json()
        assert schema["openapi"].startswith("3.1")
