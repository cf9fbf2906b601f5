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


async def test_legacy_completions_default_to_16_tokens(
    make_harness: Callable, tmp_path: Path
) -> None:
    chosen = canned_spec(tmp_path, name="chosen", defaults={"max_tokens": 100})
    async with make_harness(canned_spec(tmp_path), chosen) as h:

        async def sent(model: str, **extra: object) -> object:
            body = {"model": model, "prompt": "hi", "x_echo": True, **extra}
            answer = await h.call("/v1/completions", body)
            return answer.json()["received"].get("max_tokens")

        assert await sent("canned") == 16  # as OpenAI and vLLM; llama.cpp would fill the context
        assert await sent("canned", max_tokens=3) == 3
        assert await sent("chosen") == 100  # the catalog's default wins
        chat = {"model": "canned", "messages": [{"role": "user", "content": "hi"}], "x_echo": True}
        received = (await h.call("/v1/chat/completions", chat)).json()["received"]
        # Chat keeps the engine's own limit, the context, sent as the one length field.
        assert received["max_tokens"] == 4096
