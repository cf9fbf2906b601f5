"""The usage ledger's writer: rows are handed over on the request path (an ``append``, no
I/O) and written in batches by one task, every ``interval`` seconds or as soon as
``batch`` rows wait, and at shutdown.

Each batch is one transaction (rows and the balances they give back), so a killed gateway
leaves no partial rows: what it loses is at most the rows not yet written, those of the
last ``interval`` (or ``batch`` rows). A database that fails keeps the rows waiting, up
to ``MAX_PENDING``, and they are written when it answers again. Each batch also gives back
the credit the gateway holds in hand (``balance.Wallets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from modelyard.accounts.balance import Wallets
from modelyard.accounts.store import Store, UsageRow

log = logging.getLogger(__name__)

MAX_PENDING = 100_000


class LedgerWriter:
    def __init__(
        self,
        store: Store,
        wallets: Wallets | None = None,
        *,
        interval: float = 0.2,
        batch: int = 500,
    ) -> None:
        self._store = store
        self._wallets = wallets
        """Their credit in hand goes back with each batch."""
        self._interval = interval
        self._batch = batch
        self._pending: deque[UsageRow] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._failing = False
        self.written = 0
        self.dropped = 0
        self.collect: Callable[[], None] | None = None
        """Called first by every flush: appends the rows of requests finished but not yet
        booked (``api.telemetry``), so that a flush has every row."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage ledger")

    def append(self, row: UsageRow) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(row)
        if len(self._pending) >= self._batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, everything: bool = True) -> None:
        """Writes the rows waiting now, not those that come meanwhile: under load a flush
        that chased them would become a stream of one-row transactions (raises if the
        database fails)."""
        if self.collect is not None:
            self.collect()
        async with self._lock:  # one that is writing finishes first: all is written after
            await self._flush(everything)

    async def _flush(self, everything: bool) -> None:
        left = len(self._pending)
        # The credit goes back with the first batch (its give-back does not count as use).
        returns = self._wallets.drain(everything) if self._wallets is not None else {}
        while True:
            count = min(self._batch, left, len(self._pending))
            rows = [self._pending.popleft() for _ in range(count)]
            left -= count
            try:
                await self._store.write(rows, returns)
            except BaseException:
                self._pending.extendleft(reversed(rows))
                for wallet, amount in returns.items():
                    assert self._wallets is not None
                    self._wallets.restore(wallet, amount)
                raise
            returns = {}
            self.written += len(rows)
            if not left or not self._pending:
                return

    async def close(self) -> None:
        """Stops the task and writes what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
        except Exception as exc:
            log.error(
                "usage ledger: %d rows could not be written at shutdown: %s",
                len(self._pending),
                exc,
            )

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush(everything=False)  # busy balances keep their credit in hand
                if self._failing:
                    log.info("usage ledger: writing again")
                    self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.error(
                        "usage ledger: cannot write (%d rows wait): %s", len(self._pending), exc
                    )
                    self._failing = True
                await asyncio.sleep(1.0)
