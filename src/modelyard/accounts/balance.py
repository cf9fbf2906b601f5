"""Token balances on the request path without a database write per request.

A request reserves its worst case before it is forwarded and gives back what it did not use
when it ends. Doing each of those in the database costs a transaction per request (a
millisecond and more on SQLite, most of the gateway's own time), so each gateway keeps, per
balance, credit *in hand*: tokens it took from the database in one conditional ``UPDATE``
(``balance >= n``), a few requests' worth at a time (``PREFETCH``), and reserves from there.
What comes back from a request stays in hand. A balance's credit goes back to the database
with the next batch of usage rows (every 200 ms, in the same transaction) once no request
used it for a whole batch interval, and all of it whenever the ledger is read or the
gateway stops. One request at a time tops up a balance; the others wait for its credit.

So a balance never goes below zero, in the database or in hand, however many requests and
gateways race; another gateway may find tokens held here for up to a flush interval; and a
gateway killed with SIGKILL loses (keeps charged) what it held in hand: a few requests'
worst case (``PREFETCH``, and the requests then running) per balance it was serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelyard.accounts.store import Store

PREFETCH = 8
"""Requests' worth of credit taken from the database at once (less when there is less)."""

Wallet = tuple[str, object]
"""``("key", id)`` or ``("user", id)``."""


class Wallets:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._hand: dict[Wallet, int] = {}
        self._busy: set[Wallet] = set()
        """Used since the last ``drain``: their credit stays in hand."""
        self._topping: dict[Wallet, asyncio.Lock] = {}

    async def reserve(self, wallets: Iterable[Wallet], amount: int) -> bool:
        """Takes ``amount`` from every one of ``wallets``, or from none of them."""
        taken: list[Wallet] = []
        for wallet in wallets:
            if not await self._take(wallet, amount):
                for done in taken:
                    self.give_back(done, amount)
                return False
            taken.append(wallet)
        return True

    async def _take(self, wallet: Wallet, amount: int) -> bool:
        self._busy.add(wallet)
        if self._from_hand(wallet, amount):
            return True
        lock = self._topping.setdefault(wallet, asyncio.Lock())
        async with lock:  # one top-up at a time; the others then find its credit
            for _ in range(3):
                if self._from_hand(wallet, amount):
                    return True
                need = amount - self._hand.get(wallet, 0)
                got = await self._store.take(wallet, max(need, amount * PREFETCH), need)
                if got is None:  # no balance at all any more: nothing to count
                    return True
                self._hand[wallet] = self._hand.get(wallet, 0) + got
                if got == 0:
                    return self._from_hand(wallet, amount)
        # Others kept taking what this one fetched: it counts as too little.
        return False

    def _from_hand(self, wallet: Wallet, amount: int) -> bool:
        have = self._hand.get(wallet, 0)
        if have < amount:
            return False
        self._hand[wallet] = have - amount
        return True

    def take_now(self, wallet: Wallet, amount: int) -> int:
        """Up to ``amount`` from the credit in hand, at once; how much it took."""
        taken = min(amount, self._hand.get(wallet, 0))
        if taken > 0:
            self._busy.add(wallet)
            self._hand[wallet] -= taken
        return max(taken, 0)

    def give_back(self, wallet: Wallet, amount: int) -> None:
        """What a request reserved and did not use."""
        if amount > 0:
            self._busy.add(wallet)
            self._hand[wallet] = self._hand.get(wallet, 0) + amount

    def restore(self, wallet: Wallet, amount: int) -> None:
        """Drained credit that could not be written back: in hand again."""
        if amount > 0:
            self._hand[wallet] = self._hand.get(wallet, 0) + amount

    def drain(self, everything: bool = True) -> dict[Wallet, int]:
        """The credit in hand, to go back to the database (``give_back`` it if that fails):
        all of it, or that of the balances no request used since the last drain."""
        hand = {
            w: n for w, n in self._hand.items() if n > 0 and (everything or w not in self._busy)
        }
        for wallet in hand:
            del self._hand[wallet]
        self._busy.clear()
        if len(self._topping) > 1000:
            self._topping = {w: lock for w, lock in self._topping.items() if lock.locked()}
        return hand

    def held(self, wallet: Wallet) -> int:
        return self._hand.get(wallet, 0)
