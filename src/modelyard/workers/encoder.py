"""The encoder runner's child program: one sentence-transformers model over HTTP.

    python -m modelyard.workers.encoder --model DIR --kind embedding --port N [...]

Serves an embedding model (``SentenceTransformer``) or a cross-encoder reranker
(``CrossEncoder``) loaded by ``modelyard.workers.encoder_model``:
``POST /v1/embeddings`` and ``POST /v1/rerank`` (an embedding model reranks by cosine
similarity), ``GET /health`` and ``GET /stats`` (the batcher's counters). Concurrent requests
are merged into batches by ``Batcher``; each request gets exactly its own results back.

The gateway validates requests before they get here and shapes rerank answers (sorting,
``top_n``, documents); this server still checks what it relies on, so it is safe to call
directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np
import orjson
import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.catalog.spec import EncoderBackend, default
from modelyard.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelyardError,
    invalid_request,
)
from modelyard.protocol.openai import EmbeddingRequest, RerankRequest
from modelyard.workers import lifeline
from modelyard.workers.batcher import Batcher
from modelyard.workers.encoder_auth import KEY_ENV, RequireKey
from modelyard.workers.encoder_model import Encoder, TokenCounter, Vector, load

log = logging.getLogger("modelyard.encoder")

M = TypeVar("M", bound=BaseModel)
# Inputs are tokenized on the event loop up to this many texts, in a thread beyond.
_INLINE_TOKENIZE = 32


class EncoderServer:
    """The HTTP layer: validation, tokenization, batching, answer shapes."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        name: str,
        truncate: bool,
        matryoshka: bool,
        max_batch: int,
        batch_wait: float,
        max_batch_tokens: int,
        bucketing: bool = True,
        lanes: Sequence[ThreadPoolExecutor] = (),
    ) -> None:
        self.encoder = encoder
        # One counter for the event loop, one for the counting thread (long inputs).
        self._inline_count = TokenCounter(encoder.tokenizer)
        self._pooled_count = TokenCounter(encoder.tokenizer)
        self._count_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="count")
        self.name = name
        self.truncate = truncate
        self.matryoshka = matryoshka
        self.batcher: Batcher[Any, Any] = Batcher(
            encoder.compute,
            max_batch=max_batch,
            max_wait=batch_wait,
            max_tokens=max_batch_tokens,
            bucketing=bucketing,
            lanes=lanes,
        )
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/stats", self.stats, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/rerank", self.rerank, methods=["POST"]),
            ],
            exception_handlers={ModelyardError: _error},
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.batcher.close()
        self._count_pool.shutdown(wait=False)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(asdict(self.batcher.stats))

    async def embeddings(self, request: Request) -> Response:
        if self.encoder.kind != "embedding":
            raise InvalidRequestError(f"{self.name} is a reranker; it has no embeddings")
        body = await _parse(request, EmbeddingRequest)
        texts = body.texts()
        dimensions = self._dimensions(body.dimensions)
        lengths = await self._lengths(texts, None, "input", body.truncate)
        vectors: list[Vector] = await self.batcher.submit(list(zip(texts, lengths, strict=True)))
        data = []
        for i, vector in enumerate(vectors):
            if dimensions is not None:
                vector = _normalized(vector[:dimensions])
            value: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(lengths)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": self.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def rerank(self, request: Request) -> Response:
        body = await _parse(request, RerankRequest)
        documents = body.texts()
        if self.encoder.kind == "embedding":
            scores, tokens = await self._cosine(body.query, documents, body.truncate)
        else:
            lengths = await self._lengths(documents, body.query, "documents", body.truncate)
            pairs = [((body.query, doc), n) for doc, n in zip(documents, lengths, strict=True)]
            scores, tokens = await self.batcher.submit(pairs), sum(lengths)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        if body.top_n is not None:
            order = order[: body.top_n]
        results = [{"index": i, "relevance_score": float(scores[i])} for i in order]
        return _json(
            {
                "model": self.name,
                "results": results,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _cosine(
        self, query: str, documents: list[str], truncate: bool | None
    ) -> tuple[list[float], int]:
        texts = [query, *documents]
        lengths = await self._lengths([query], None, "query", truncate)
        lengths += await self._lengths(documents, None, "documents", truncate)
        vectors = await self.batcher.submit(list(zip(texts, lengths, strict=True)))
        matrix = np.stack([_normalized(v) for v in vectors])
        scores = matrix[1:] @ matrix[0]
        return [float(s) for s in scores], sum(lengths)

    async def _lengths(
        self, texts: list[str], pairs_with: str | None, param: str, truncate: bool | None
    ) -> list[int]:
        """Token counts, after truncation; an over-long input is a 400 unless truncating."""
        if len(texts) <= _INLINE_TOKENIZE:
            lengths = self._inline_count(texts, pairs_with)
        else:
            lengths = await asyncio.get_running_loop().run_in_executor(
                self._count_pool, self._pooled_count, texts, pairs_with
            )
        limit = self.encoder.max_tokens
        if not (self.truncate if truncate is None else truncate):
            for i, n in enumerate(lengths):
                if n > limit:
                    raise ContextLengthError(
                        f"{param}[{i}] is {n} tokens long; {self.name} takes at most {limit}. "
                        'Shorten it, or send "truncate": true (or set truncate = true in the '
                        "model's catalog entry) to cut it to the limit.",
                        param=param,
                    )
        return [min(n, limit) for n in lengths]

    def _dimensions(self, dimensions: int | None) -> int | None:
        if dimensions is None or dimensions == self.encoder.dimensions:
            return None
        if not self.matryoshka:
            raise InvalidRequestError(
                f"{self.name} does not support 'dimensions': it was not trained to be "
                "shortened (set matryoshka = true in its catalog entry if it was)",
                param="dimensions",
            )
        if not 1 <= dimensions <= self.encoder.dimensions:
            raise InvalidRequestError(
                f"'dimensions' must be between 1 and {self.encoder.dimensions}",
                param="dimensions",
            )
        return dimensions


def _json(content: Any) -> Response:
    """numpy vectors straight to JSON (float32 in shortest form): ~30x faster than ``json``."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


def _normalized(vector: Vector) -> Vector:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


async def _parse(request: Request, schema: type[M]) -> M:
    try:
        return schema.model_validate_json(await request.body())
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelyardError)
    return JSONResponse(exc.envelope(), status_code=exc.status)


def _lane() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")


def default_threads() -> int:
    """Threads of a model that does not set ``threads``: every core this process may use.
    Leaving one to the gateway was measured on 2 cores (benchmarks.md, B8 and B11): it helps
    only while chat shares the cores, and costs a lone rerank request up to 40 %."""
    return len(os.sched_getaffinity(0))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelyard.workers.encoder")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--kind", choices=["embedding", "rerank"], default="embedding")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--backend", choices=get_args(EncoderBackend), default=default("backend"))
    parser.add_argument("--onnx-cache", type=Path, default=None)
    parser.add_argument("--max-batch", type=int, default=default("max_batch"))
    parser.add_argument("--batch-wait", type=float, default=default("batch_wait"), help="seconds")
    parser.add_argument("--max-batch-tokens", type=int, default=default("max_batch_tokens"))
    parser.add_argument(
        "--no-bucketing", action="store_true", help="batches in arrival order, not by length"
    )
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument("--matryoshka", action="store_true")
    args = parser.parse_args(argv)
    lifeline.hold()

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    # The model is loaded (and, for auto, timed) on the thread its batches run on: torch's
    # OpenMP threads belong to the thread that first computes; a model that computed on one
    # thread and then serves on another ran single texts 2.3 times slower (4.7 against 10.8 ms).
    thread = _lane()
    encoder, backend = thread.submit(
        load, args.model, args.kind, args.backend, args.threads, args.onnx_cache
    ).result()
    log.info(
        "loaded %s (%s, %s backend, %d threads%s) in %.2f s",
        args.model,
        args.kind,
        backend,
        args.threads,
        f", {encoder.lanes} batches at once" if encoder.lanes > 1 else "",
        time.perf_counter() - started,
    )
    server = EncoderServer(
        encoder,
        name=args.name or args.model.name,
        truncate=args.truncate,
        matryoshka=args.matryoshka,
        max_batch=args.max_batch,
        batch_wait=args.batch_wait,
        max_batch_tokens=args.max_batch_tokens,
        bucketing=not args.no_bucketing,
        lanes=[thread, *(_lane() for _ in range(encoder.lanes - 1))],
    )
    app = RequireKey(server.app, os.environ.get(KEY_ENV))
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
