"""Follow the store's change feed: one snapshot, then only what changed.

dnsd, the proxy and certd all keep an in-memory view of the store; this is the one loop
that keeps such a view current, so each service only says how to apply a snapshot and
how to apply a change set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from webgateway.model import ChangeSet, NameLoad, Snapshot
from webgateway.store import Store, StoreError

log = logging.getLogger(__name__)


class View(Protocol):
    def load(self, snapshot: Snapshot) -> None: ...
    def apply(self, changes: ChangeSet) -> None: ...


class Follower:
    """Keeps ``view`` at the store's serial. ``serial`` is what the view has applied."""

    def __init__(self, store: Store, view: View, *, max_wait: float = 1.0,
                 names_as: NameLoad = NameLoad.FULL,
                 prepare: Callable[[Mapping[str, str | None]], Awaitable[None]] | None = None,
                 ) -> None:
        """``names_as``: what of the names the view needs at a (re)load; change sets
        always carry the changed names whole. ``prepare``: awaited with the meta of each
        snapshot or change set before the view gets it (dnsd opens the private keys a new
        DNSSEC key list names)."""
        self.store = store
        self.view = view
        self.names_as = names_as
        self.prepare = prepare
        self.max_wait = max_wait
        self.serial = 0
        self.applied = asyncio.Event()

    async def load(self) -> None:
        snap = await self.store.snapshot(self.names_as)
        if self.prepare is not None:
            await self.prepare(snap.meta)
        self.view.load(snap)
        self.serial = snap.serial
        self._mark_applied()

    def _mark_applied(self) -> None:
        ev, self.applied = self.applied, asyncio.Event()
        ev.set()

    async def step(self) -> None:
        """Wait (bounded) for a change and apply it."""
        current = await self.store.wait_changed(self.serial, self.max_wait)
        if current == self.serial:
            return
        changes = await self.store.changes_since(self.serial)
        if changes is None:
            await self.load()
            return
        if not changes.empty:
            if self.prepare is not None and changes.meta:
                await self.prepare(changes.meta)
            self.view.apply(changes)
        self.serial = changes.serial
        self._mark_applied()

    async def run(self) -> None:
        """Follow forever. A store hiccup is retried; a view that fails to apply a change
        may be half-updated, so it is rebuilt from a fresh snapshot. Neither is fatal."""
        reload = self.serial == 0
        failing = False  # an outage is logged when it starts and ends, not once a second
        while True:
            try:
                if reload:
                    await self.load()
                    reload = False
                await self.step()
                if failing:
                    log.warning("%s follows the store again at serial %d",
                                type(self.view).__name__, self.serial)
                    failing = False
            except StoreError as e:
                if not failing:
                    log.warning("store read failed, retrying: %s", e)
                failing = True
                await asyncio.sleep(self.max_wait)
            except Exception:
                log.exception("%s failed to follow the store; reloading",
                              type(self.view).__name__)
                reload = True
                await asyncio.sleep(self.max_wait)
