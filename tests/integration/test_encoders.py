"""Embeddings and rerank through ``modelyard serve``: real MiniLM, a real (tiny) cross-encoder,
and the Gemma GGUF in llama.cpp's embedding mode."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import psutil
import pytest

from tests.integration.conftest import Server, gemma, minilm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """
[memory]
ram = "6GiB"

[models.minilm]
path = "{minilm}"
aliases = ["all-minilm"]
threads = 2

[models.minilm-short]
path = "{minilm}"
matryoshka = true
max_batch = 8
threads = 1

[models.reranker]
path = "{reranker}"
threads = 1

[models.reranker-no-onnx]
path = "{reranker_no_onnx}"
threads = 1

[models.minilm-onnx]
path = "{minilm_copy}"
backend = "onnx"
threads = 2

[models.gemma-embed]
path = "{gemma}"
kind = "embedding"
ctx = 512
parallel = 2
threads = 2
matryoshka = true
extra_args = ["--pooling", "mean"]

[models.gemma-rerank]
path = "{gemma}"
kind = "rerank"
ctx = 512
parallel = 1
threads = 2
"""

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
]

# A small hand-labelled retrieval set: the first two documents answer the query.
QUERY = "How do I bake bread at home?"
DOCUMENTS = [
    "The stock market fell sharply on Tuesday after the bank's report.",
    "Knead the dough, let it rise for an hour, then bake the loaf at 220 C for 30 minutes.",
    "Jupiter is the largest planet in the solar system.",
    "Homemade sourdough bread needs a starter, flour, water and salt, and a hot oven.",
    "The football match ended in a goalless draw.",
]
RELEVANT = {1, 3}


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised ``BertForSequenceClassification`` with one label."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-reranker")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def reranker_no_onnx(tmp_path_factory: pytest.TempPathFactory, reranker_dir: Path) -> Path:
    """The tiny reranker with an ONNX file ONNX Runtime cannot read."""
    path = tmp_path_factory.mktemp("no-onnx") / "reranker"
    shutil.copytree(reranker_dir, path, ignore=shutil.ignore_patterns("onnx"))
    (path / "onnx").mkdir()
    (path / "onnx" / "model.onnx").write_bytes(b"not a model")
    return path


@pytest.fixture(scope="module")
def minilm_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM in a directory of our own, where the ONNX export may be written."""
    path = tmp_path_factory.mktemp("copy") / "minilm"
    shutil.copytree(minilm(), path)
    return path


@pytest.fixture(scope="module")
def server(
    server_factory: Callable[..., Server],
    reranker_dir: Path,
    reranker_no_onnx: Path,
    minilm_copy: Path,
) -> Server:
    config = CONFIG.format(
        minilm=minilm(),
        reranker=reranker_dir,
        reranker_no_onnx=reranker_no_onnx,
        gemma=gemma(),
        minilm_copy=minilm_copy,
    )
    return server_factory(config)


@pytest.fixture(scope="module")
def direct() -> Any:
    """The same MiniLM through sentence-transformers directly, for reference vectors."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm()), device="cpu", local_files_only=True)


def embed(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=120)


def rerank(server: Server, body: dict[str, Any], path: str = "/v1/rerank") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_match_sentence_transformers(server: Server, direct: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=120)
    answer = client.embeddings.create(model="all-minilm", input=SENTENCES)
    expected = direct.encode(SENTENCES)
    assert [d.index for d in answer.data] == list(range(len(SENTENCES)))
    for item, reference in zip(answer.data, expected, strict=True):
        assert cosine(item.embedding, reference) >= 0.9999
    tokens = sum(len(ids) for ids in direct.tokenizer(SENTENCES)["input_ids"])
    assert answer.usage.prompt_tokens == tokens
    assert answer.model == "minilm"


def test_base64_decodes_to_the_same_floats(server: Server) -> None:
    floats = embed(server, {"model": "minilm", "input": SENTENCES[:2]}).json()["data"]
    encoded = embed(
        server, {"model": "minilm", "input": SENTENCES[:2], "encoding_format": "base64"}
    ).json()["data"]
    for f, b in zip(floats, encoded, strict=True):
        raw = base64.b64decode(b["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(f["embedding"], abs=1e-6)


def test_similar_sentences_are_closer(server: Server) -> None:
    data = embed(server, {"model": "minilm", "input": SENTENCES}).json()["data"]
    v = [d["embedding"] for d in data]
    # eating food ~ eating bread; riding a horse ~ riding a white horse
    assert cosine(v[0], v[1]) > cosine(v[0], v[4]) + 0.2
    assert cosine(v[3], v[6]) > cosine(v[3], v[7]) + 0.2


def test_concurrent_single_texts_each_get_their_own_vector(server: Server, direct: Any) -> None:
    texts = [f"Request number {i} asks about {word}." for i, word in enumerate(_words(32))]

    async def one(client: httpx.AsyncClient, text: str) -> list[float]:
        response = await client.post("/v1/embeddings", json={"model": "minilm", "input": text})
        assert response.status_code == 200, response.text
        vector: list[float] = response.json()["data"][0]["embedding"]
        return vector

    async def crowd() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            await one(client, "warm up")  # loads the model first
            return await asyncio.gather(*(one(client, t) for t in texts))

    vectors = asyncio.run(crowd())
    expected = direct.encode(texts)
    for text, vector, reference in zip(texts, vectors, expected, strict=True):
        assert cosine(vector, reference) >= 0.9999, text
    stats = _worker_stats(server, "minilm")
    assert stats["largest_batch"] > 1
    assert stats["batches"] < stats["inputs"]  # several requests shared forward passes


def test_onnx_backend_matches_and_keeps_its_export(
    server: Server, direct: Any, minilm_copy: Path
) -> None:
    """On two threads ONNX runs two batches at once, one thread each: one request's inputs
    are spread over both, and so are a crowd's; every answer matches torch's."""
    answer = embed(server, {"model": "minilm-onnx", "input": SENTENCES})
    assert answer.status_code == 200, answer.text
    expected = direct.encode(SENTENCES)
    for item, reference in zip(answer.json()["data"], expected, strict=True):
        assert cosine(item["embedding"], reference) >= 0.9999
    assert (minilm_copy / "onnx" / "model.onnx").stat().st_size > 1024**2
    with ThreadPoolExecutor(max_workers=8) as pool:
        crowd = list(
            pool.map(lambda s: embed(server, {"model": "minilm-onnx", "input": s}), SENTENCES * 3)
        )
    for answer, reference in zip(crowd, [*expected] * 3, strict=True):
        assert answer.status_code == 200, answer.text
        assert cosine(answer.json()["data"][0]["embedding"], reference) >= 0.9999
    log = (server.home / "logs" / "minilm-onnx.log").read_text()
    assert "(embedding, onnx backend, 2 threads, 2 batches at once)" in log


def test_dimensions_shorten_and_renormalise(server: Server, direct: Any) -> None:
    answer = embed(server, {"model": "minilm-short", "input": SENTENCES[0], "dimensions": 64})
    assert answer.status_code == 200, answer.text
    vector = np.asarray(answer.json()["data"][0]["embedding"])
    full = direct.encode([SENTENCES[0]])[0][:64]
    assert vector.shape == (64,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert cosine(vector, full) >= 0.9999
    # The full width is always allowed; more than that never is.
    same = embed(server, {"model": "minilm", "input": SENTENCES[0], "dimensions": 384})
    assert len(same.json()["data"][0]["embedding"]) == 384
    wide = embed(server, {"model": "minilm-short", "input": SENTENCES[0], "dimensions": 385})
    assert wide.status_code == 400
    assert wide.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "minilm", "input": []}, "input", "must not be empty"),
        ({"model": "minilm", "input": ["fine", 7]}, "input", "must be a string"),
        ({"model": "minilm", "input": [[101, 2023]]}, "input", "token arrays"),
        ({"model": "minilm", "input": "x", "dimensions": 64}, "dimensions", "not trained"),
        ({"model": "minilm", "input": "x", "encoding_format": "hex"}, "encoding_format", ""),
        ({"model": "minilm", "input": "word " * 400}, "input", "takes at most 256"),
        ({"model": "reranker", "input": "x"}, "model", "serves rerank"),
    ],
)
def test_bad_embedding_requests_get_400(
    server: Server, body: dict[str, Any], param: str, fragment: str
) -> None:
    answer = embed(server, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"]


def test_truncate_cuts_long_inputs_to_the_limit(server: Server) -> None:
    answer = embed(server, {"model": "minilm", "input": "word " * 400, "truncate": True})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == 256


def test_chat_request_to_an_embedding_model_is_400(server: Server) -> None:
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "model_kind_mismatch"


def test_models_list_says_how_each_model_reranks(server: Server) -> None:
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert models["minilm"]["capabilities"] == ["embedding", "rerank"]
    assert models["minilm"]["rerank_method"] == "cosine"
    assert models["reranker"]["kind"] == "rerank"  # classified from its config.json
    assert models["reranker"]["rerank_method"] == "cross-encoder"
    assert models["gemma-embed"]["capabilities"] == ["embedding"]
    assert models["gemma-rerank"]["rerank_method"] == "cross-encoder"


def test_rerank_by_cosine_puts_relevant_documents_first(server: Server) -> None:
    answer = rerank(server, {"model": "minilm", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert {r["index"] for r in results[:2]} == RELEVANT
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)


def test_rerank_cohere_and_jina_shapes(server: Server) -> None:
    cohere = rerank(
        server,
        {
            "model": "minilm",
            "query": QUERY,
            "documents": DOCUMENTS,
            "top_n": 2,
            "return_documents": False,
        },
        path="/v2/rerank",
    )
    assert cohere.status_code == 200, cohere.text
    results = cohere.json()["results"]
    assert len(results) == 2
    assert {r["index"] for r in results} == RELEVANT
    assert all("document" not in r for r in results)

    jina = rerank(
        server,
        {
            "model": "minilm",
            "query": QUERY,
            "documents": [{"text": d} for d in DOCUMENTS],
            "top_n": 3,
        },
        path="/rerank",
    )
    assert jina.status_code == 200, jina.text
    body = jina.json()
    assert [r["document"]["text"] for r in body["results"][:2]] != []
    assert len(body["results"]) == 3
    assert body["results"][0]["document"] == {"text": DOCUMENTS[body["results"][0]["index"]]}
    assert body["usage"]["total_tokens"] > 0

    # top_k, as several self-hosted rerank APIs call top_n.
    best = rerank(server, {"model": "minilm", "query": QUERY, "documents": DOCUMENTS, "top_k": 1})
    assert best.status_code == 200, best.text
    assert [r["index"] for r in best.json()["results"]] == [body["results"][0]["index"]]


def _predict(path: Path) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path), device="cpu", local_files_only=True)
    return list(model.predict([(QUERY, d) for d in DOCUMENTS]))


def _scores(server: Server, model: str) -> list[float]:
    answer = rerank(server, {"model": model, "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    return [got[i] for i in range(len(DOCUMENTS))]


def test_cross_encoder_scores_match_predict(server: Server, reranker_dir: Path) -> None:
    """The reranker sets no backend: ``auto`` exports it to ONNX, times both backends, runs
    the faster and scores as torch does; its next load remembers the choice."""
    assert _scores(server, "reranker") == pytest.approx(_predict(reranker_dir), abs=1e-5)
    assert (reranker_dir / "onnx" / "model.onnx").is_file()
    log = (server.home / "logs" / "reranker.log").read_text()
    chosen = re.search(r"auto backend: (\w+) \(the probe took onnx \d+ ms, torch \d+ ms\)", log)
    assert chosen is not None, log
    assert f"(rerank, {chosen[1]} backend, 1 threads)" in log
    assert httpx.post(f"{server.url}/api/unload", json={"model": "reranker"}).status_code == 200
    assert _scores(server, "reranker") == pytest.approx(_predict(reranker_dir), abs=1e-5)
    log = (server.home / "logs" / "reranker.log").read_text()
    assert log.count("the probe took") == 1
    assert f"auto backend: {chosen[1]}, the faster when measured before" in log
    assert log.count(f"(rerank, {chosen[1]} backend, 1 threads)") == 2


def test_auto_backend_runs_on_torch_where_onnx_fails(
    server: Server, reranker_no_onnx: Path
) -> None:
    assert _scores(server, "reranker-no-onnx") == pytest.approx(
        _predict(reranker_no_onnx), abs=1e-5
    )
    log = (server.home / "logs" / "reranker-no-onnx.log").read_text()
    assert "does not run on ONNX Runtime" in log
    assert "(rerank, torch backend, 1 threads)" in log


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "minilm", "query": QUERY, "documents": []}, "documents"),
        ({"model": "minilm", "query": "", "documents": ["a"]}, "query"),
        ({"model": "minilm", "query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
        ({"model": "minilm", "query": QUERY, "documents": ["a"], "top_n": 1, "top_k": 2}, "top_k"),
        ({"model": "minilm", "query": QUERY, "documents": [{"image": "x.png"}]}, "documents.0"),
        ({"model": "gemma-embed", "query": QUERY, "documents": ["a"]}, "model"),
    ],
)
def test_bad_rerank_requests_get_400(server: Server, body: dict[str, Any], param: str) -> None:
    answer = rerank(server, body)
    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"]["param"] or "").startswith(param)


def test_gguf_embeddings_through_llama_cpp(server: Server) -> None:
    data = embed(server, {"model": "gemma-embed", "input": SENTENCES}).json()["data"]
    v = [d["embedding"] for d in data]
    assert len(v[0]) == 640  # gemma-3-270m's embedding length
    # A base model pools poorly, so no semantic claim: each vector is its own input's, in order.
    for i in (0, 3, 7):
        alone = embed(server, {"model": "gemma-embed", "input": SENTENCES[i]}).json()["data"]
        # llama.cpp's batched and single results differ in the last digits (~1e-4).
        scores = [cosine(alone[0]["embedding"], other) for other in v]
        assert scores[i] >= 0.999
        assert max(scores[:i] + scores[i + 1 :]) < scores[i] - 0.01
    short_body = {"model": "gemma-embed", "input": SENTENCES[3], "dimensions": 128}
    short = embed(server, short_body).json()["data"][0]["embedding"]
    alone_3 = embed(server, {"model": "gemma-embed", "input": SENTENCES[3]}).json()["data"][0][
        "embedding"
    ]
    assert len(short) == 128
    assert cosine(short, v[3][:128]) >= 0.9999
    assert float(np.linalg.norm(short)) == pytest.approx(1.0, abs=1e-5)
    for body in (
        {"model": "gemma-embed", "input": SENTENCES[3], "encoding_format": "base64"},
        {**short_body, "encoding_format": "base64"},
    ):
        raw = base64.b64decode(embed(server, body).json()["data"][0]["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        reference = short if "dimensions" in body else alone_3
        assert decoded == pytest.approx(reference, abs=1e-5)


def test_gguf_rerank_through_llama_cpp(server: Server) -> None:
    # A base model's rank scores mean nothing; what is checked is that the gateway passes
    # llama.cpp's own scores through, sorted, cut to top_n, with the documents attached.
    body = {"model": "gemma-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 3}
    answer = rerank(server, body)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    runner = server.runner("gemma-rerank")
    direct = httpx.post(
        f"{runner.url}/v1/rerank",
        json={"query": QUERY, "documents": DOCUMENTS},
        headers=runner.headers,
        timeout=60,
    ).json()["results"]
    engine = {r["index"]: r["relevance_score"] for r in direct}
    assert len(results) == 3
    assert [r["index"] for r in results] == sorted(engine, key=lambda i: -engine[i])[:3]
    for r in results:
        assert r["relevance_score"] == pytest.approx(engine[r["index"]], abs=1e-4)
        assert r["document"] == {"text": DOCUMENTS[r["index"]]}


def test_encoder_workers_are_children_of_the_gateway(server: Server) -> None:
    embed(server, {"model": "minilm", "input": "hello"})
    (entry,) = [m for m in server.ps() if m["name"] == "minilm"]
    worker = psutil.Process(int(str(entry["pid"])))
    assert worker.pid in {p.pid for p in psutil.Process(server.process.pid).children()}
    memory: Any = entry["memory"]
    assert memory["measured"]["ram"] > 100 * 1024**2


@pytest.mark.parametrize(
    ("model", "path", "body"),
    [
        ("minilm", "/v1/embeddings", {"input": "hello"}),
        ("gemma-embed", "/v1/embeddings", {"input": "hello"}),
    ],
)
def test_runners_answer_only_the_gateway(
    server: Server, model: str, path: str, body: dict[str, Any]
) -> None:
    embed(server, {"model": model, "input": "load it"})
    runner = server.runner(model)
    assert str(runner.url) not in httpx.get(f"{server.url}/api/ps").text
    bare = httpx.post(f"{runner.url}{path}", json={"model": model, **body}, timeout=60)
    assert bare.status_code == 401
    wrong = httpx.post(
        f"{runner.url}{path}",
        json={"model": model, **body},
        headers={"Authorization": "Bearer guessed"},
        timeout=60,
    )
    assert wrong.status_code == 401
    keyed = httpx.post(
        f"{runner.url}{path}", json={"model": model, **body}, headers=runner.headers, timeout=60
    )
    assert keyed.status_code == 200
    assert httpx.get(f"{runner.url}/health", timeout=10).status_code == 200  # for probes


def _worker_stats(server: Server, model: str) -> dict[str, Any]:
    runner = server.runner(model)
    stats: dict[str, Any] = httpx.get(f"{runner.url}/stats", headers=runner.headers).json()
    return stats


WORDS = """rivers mountains bread music physics gardens trains poetry volcanoes chess coffee whales
deserts violins rockets bees glaciers markets islands robots tea wolves lanterns bridges comets
forests tides clocks maps owls cities storms"""


def _words(n: int) -> list[str]:
    return WORDS.split()[:n]


SWAP_CONFIG = """
[memory]
ram = "1100MiB"    # the encoder and one chat model fit, never two chat models
min_residency = 0

[models.minilm]
path = "{minilm}"
pinned = true
memory = "600MiB"

[models.a]
path = "{gemma}"
chat_template = "gemma"
ctx = 512
parallel = 1
memory = "400MiB"

[models.b]
path = "{gemma}"
chat_template = "gemma"
ctx = 512
parallel = 1
memory = "400MiB"
"""


@pytest.mark.slow
def test_pinned_encoder_stays_through_chat_swaps(server_factory: Callable[..., Server]) -> None:
    server = server_factory(SWAP_CONFIG.format(minilm=minilm(), gemma=gemma()))

    def chat(model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text

    def loaded() -> dict[str, int]:
        return {str(m["name"]): int(str(m["pid"])) for m in server.ps() if m["state"] == "ready"}

    chat("a")
    assert embed(server, {"model": "minilm", "input": "hello"}).status_code == 200
    pids = loaded()
    assert set(pids) == {"minilm", "a"}  # a chat model and the encoder, side by side
    children = {p.pid for p in psutil.Process(server.process.pid).children()}
    assert set(pids.values()) <= children

    chat("b")  # b needs a's memory: a goes, the pinned encoder stays
    after = loaded()
    assert set(after) == {"minilm", "b"}
    assert after["minilm"] == pids["minilm"]
    assert embed(server, {"model": "minilm", "input": "hello"}).status_code == 200
