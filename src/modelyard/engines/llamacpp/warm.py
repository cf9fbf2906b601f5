"""Warm swaps: a llama.cpp runner's conversations survive its unload.

When the runner is stopped (idle, evicted, unloaded by hand, the catalog changed; not when it
crashed), each slot holding at least ``MIN_TOKENS`` is saved with llama.cpp's slot
save (``POST /slots/N?action=save``) into the ``KvStore``. When the model starts again, its
most recently used states are restored into its slots (``action=restore``), one per slot,
before it takes requests; llama.cpp's own slot choice (the longest common prefix) then gives
the next turn of a conversation the slot that holds it, and only the new tokens are read.

A state is kept, and restored, only where that is faster than reading its tokens again:
its size at the restore speed measured on this machine against its tokens at the model's
measured prompt speed. The first restore for a setup is checked by the engine's own figure
(``timings.cache_n`` of reading the state's tokens back): where it spares nothing (a
restore that reports success while the prompt is read in full), that setup's states are
deleted and none is saved again. Saving and restoring each take ``BOUND`` seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import aiohttp

from modelyard.catalog.spec import ModelSpec
from modelyard.engines.llamacpp.kvstore import KvStore, Saved
from modelyard.runners.base import KvNews

log = logging.getLogger(__name__)

MIN_TOKENS = 64
"""A slot holding fewer tokens is not saved: reading them again takes no time."""
BOUND = 10.0
"""Seconds a runner's saves (or restores) may take together: an unload waits no longer."""
_REUSED = 0.5
"""The share of a restored state's tokens the engine must spare for restores to count."""
_read_speed: dict[str, float] = {}
"""Bytes per second llama.cpp took to restore a state, by setup, measured here."""


def _no_news(news: KvNews) -> None:
    pass


def _moved(kind: Literal["saved", "restored"], states: list[Saved], seconds: float) -> KvNews:
    tokens = sum(s.tokens for s in states)
    return KvNews(kind, len(states), tokens, sum(s.bytes for s in states), seconds)


class WarmSlots:
    """Saves and restores the slots of one llama.cpp runner (see the module)."""

    def __init__(
        self,
        spec: ModelSpec,
        ident: str,
        base_url: str,
        headers: Mapping[str, str],
        store: KvStore,
    ) -> None:
        self._spec = spec
        self._ident = ident
        self._base_url = base_url
        self._headers = dict(headers)
        self._store = store
        self._prompt_tps = 0.0
        """The model's prompt speed known from the states restored (when it reads none)."""
        self.tell: Callable[[KvNews], None] = _no_news
        """Where what it did goes (its replica sets it)."""

    # ---- the two moments ---------------------------------------------------------------------

    async def restore(self) -> None:
        """Restores the most recently used states, one per slot (at most ``BOUND`` s)."""
        if self._spec.kv_cache_disk <= 0:
            return
        started = time.perf_counter()
        restored: list[Saved] = []
        try:
            async with asyncio.timeout(BOUND), self._session() as session:
                chosen, unusable = await asyncio.to_thread(self._choose)
                for saved, problem in unusable:
                    self.tell(KvNews("discarded", 1, saved.tokens, saved.bytes, detail=problem))
                for saved in chosen:
                    if await self._restore(session, len(restored), saved):
                        restored.append(saved)
                unchecked = await asyncio.to_thread(self._store.reuses, self._ident) is None
                if restored and unchecked:
                    await self._check_reuse(session, restored[0])
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s: restoring saved slots stopped: %r", self._spec.name, exc)
        if restored:
            self.tell(_moved("restored", restored, time.perf_counter() - started))
        else:
            self.tell(KvNews("missed"))

    async def save(self) -> None:
        """Saves every slot holding ``MIN_TOKENS`` or more (at most ``BOUND`` s)."""
        if self._spec.kv_cache_disk <= 0:
            return
        if await asyncio.to_thread(self._store.reuses, self._ident) is False:
            return
        started = time.perf_counter()
        saved: list[Saved] = []
        scratch: list[str] = []
        try:
            async with asyncio.timeout(BOUND), self._session() as session:
                slots = await self._get(session, "/slots")
                tps = await self._prompt_speed(session) or self._prompt_tps
                for slot in slots if isinstance(slots, list) else []:
                    if not isinstance(slot, dict) or "id_task" not in slot:
                        continue  # never used since the start
                    if int(slot.get("n_prompt_tokens") or 0) < MIN_TOKENS:
                        continue
                    name = self._store.scratch(int(slot["id"]))
                    scratch.append(name)
                    one = await self._save(session, int(slot["id"]), name, tps)
                    if one is not None:
                        saved.append(one)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s: saving slots stopped: %r", self._spec.name, exc)
        # A save cut short may still be writing: its name goes now, its space when it closes.
        for name in scratch:
            (self._store.root / name).unlink(missing_ok=True)
        dropped = await asyncio.to_thread(self._store.trim, self._spec.kv_cache_disk)
        if dropped:
            self.tell(
                KvNews("discarded", len(dropped), bytes=sum(s.bytes for s in dropped),
                       detail="least recently used, over kv_cache_disk")
            )  # fmt: skip
        if saved:
            self.tell(_moved("saved", saved, time.perf_counter() - started))

    # ---- steps -------------------------------------------------------------------------------

    def _choose(self) -> tuple[list[Saved], list[tuple[Saved, str]]]:
        """Up to one state per slot, most recently used first, each checked and worth it;
        and the ones found broken (deleted), with why."""
        chosen: list[Saved] = []
        unusable: list[tuple[Saved, str]] = []
        for saved in self._store.states():
            if saved.identity != self._ident:
                if saved.model == self._spec.name:
                    self._store.discard(saved)
                    unusable.append((saved, "saved by another setup of this model"))
                continue
            if len(chosen) == self._spec.parallel:
                continue
            problem = self._store.problem(saved)
            if problem is not None:
                self._store.discard(saved)
                unusable.append((saved, problem))
            elif self._worth_it(saved):
                chosen.append(saved)
        return chosen, unusable

    def _worth_it(self, saved: Saved) -> bool:
        """Restoring ``saved`` takes less time than reading its tokens again."""
        speed = _read_speed.get(self._ident) or saved.bytes / max(saved.save_seconds, 1e-3)
        if saved.prompt_tps <= 0:
            return True
        return saved.bytes / speed < saved.tokens / saved.prompt_tps

    async def _restore(self, session: aiohttp.ClientSession, slot: int, saved: Saved) -> bool:
        took = time.perf_counter()
        answer = await self._post(
            session, f"/slots/{slot}?action=restore", {"filename": self._store.file_name(saved)}
        )
        if answer is None or int(answer.get("n_restored") or 0) != saved.tokens:
            await asyncio.to_thread(self._store.discard, saved)
            self.tell(KvNews("discarded", 1, saved.tokens, saved.bytes, detail="engine refused it"))
            return False
        _read_speed[self._ident] = saved.bytes / max(time.perf_counter() - took, 1e-3)
        self._prompt_tps = max(self._prompt_tps, saved.prompt_tps)
        await asyncio.to_thread(self._store.touch, saved)
        return True

    async def _check_reuse(self, session: aiohttp.ClientSession, saved: Saved) -> None:
        """Reads the tokens of ``saved`` (restored in slot 0) back on its slot: the engine says
        how many it took from the restore (``cache_n``)."""
        if saved.prefix is None:
            return
        answer = await self._post(
            session,
            "/completion",
            {"prompt": saved.prefix, "n_predict": 1, "id_slot": 0, "cache_prompt": True},
        )
        timings = (answer or {}).get("timings") or {}
        cached = int(timings.get("cache_n") or 0)
        reused = cached >= _REUSED * saved.tokens
        await asyncio.to_thread(self._store.found_reuse, self._ident, reused)
        if not reused:
            for state in await asyncio.to_thread(self._store.states, self._ident):
                await asyncio.to_thread(self._store.discard, state)
            self.tell(
                KvNews(
                    "no_reuse",
                    tokens=saved.tokens,
                    detail=f"a restored state of {saved.tokens} tokens spared {cached} of them: "
                    "this model's states are no longer saved",
                )
            )

    async def _save(
        self, session: aiohttp.ClientSession, slot: int, name: str, tps: float
    ) -> Saved | None:
        took = time.perf_counter()
        answer = await self._post(session, f"/slots/{slot}?action=save", {"filename": name})
        seconds = time.perf_counter() - took
        tokens = int((answer or {}).get("n_saved") or 0)
        if tokens < MIN_TOKENS:
            return None
        saved = await asyncio.to_thread(
            self._store.keep, name, self._ident, self._spec, tokens, seconds, tps
        )
        if saved is not None and not self._worth_it(saved):
            await asyncio.to_thread(self._store.discard, saved)
            return None
        return saved

    async def _prompt_speed(self, session: aiohttp.ClientSession) -> float:
        """llama.cpp's mean prompt speed since it started (tokens/s; 0: none read)."""
        with contextlib.suppress(aiohttp.ClientError, ValueError):
            async with session.get(self._base_url + "/metrics", headers=self._headers) as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("llamacpp:prompt_tokens_seconds "):
                        return float(line.split()[1])
        return 0.0

    # ---- HTTP --------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND))

    async def _get(self, session: aiohttp.ClientSession, path: str) -> Any:
        async with session.get(self._base_url + path, headers=self._headers) as r:
            return await r.json() if r.status == 200 else None

    async def _post(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        async with session.post(self._base_url + path, json=body, headers=self._headers) as r:
            if r.status != 200:
                log.info("%s: POST %s answered %d", self._spec.name, path, r.status)
                return None
            answer = await r.json()
            return answer if isinstance(answer, dict) else None
