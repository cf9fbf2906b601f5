"""``GET /v1/models/{id}`` (OpenAI's ``models.retrieve``): by name or alias, ids with ``/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.unit.api.conftest import canned_spec


async def test_models_retrieve_by_name_or_alias(make_harness: Callable, tmp_path: Path) -> None:
    spec = canned_spec(tmp_path, aliases=("acme/m-GGUF:Q4_K_M", "short"))
    async with make_harness(spec) as h:
        for name in ("canned", "short", "acme/m-GGUF:Q4_K_M"):
            answer = await h.call(f"/v1/models/{name}", method="GET")
            assert answer.status == 200, name
            model = answer.json()
            assert (model["id"], model["object"], model["state"]) == ("canned", "model", "stopped")
        assert model == (await h.call("/v1/models", method="GET")).json()["data"][0]
        missing = await h.call("/v1/models/acme/nope", method="GET")
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "model_not_found"
