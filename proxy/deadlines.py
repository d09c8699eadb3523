"""Deadlines of many connections: a heap and one timer, not a libuv timer each.

Every new connection gets a handshake deadline, a connect deadline and an idle check. A
``call_later`` each, and its cancel, makes and closes a libuv timer (2-8 µs in uvloop,
measured in bench/README.md) for a deadline that almost never fires. Here a deadline is an
entry pushed on a heap, and one timer, running only while the heap is not empty, takes off
what is due every ``RESOLUTION`` seconds: a timeout fires up to that much late.

An entry refers to its owner weakly (a finished connection is freed at once, not when its
deadline passes) and carries the owner's ``waits`` count from when it was set: the owner
counts up whenever a wait ends, so the entry of a wait that is over is dropped unseen.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from typing import Final, Protocol

#: How late a deadline may fire (seconds).
RESOLUTION: Final = 0.1


class Expiring(Protocol):
    #: counted up by the owner whenever what it waited for happened (or it is done)
    waits: int

    def expired(self) -> None:
        """The wait last set with ``Deadlines.add`` is over its time."""
        ...


class Deadlines:
    __slots__ = ("_due", "_loop", "_seq", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[tuple[float, int, weakref.ref[Expiring], int]] = []
        self._seq = itertools.count()  # orders equal deadlines (owners do not compare)
        self._timer: asyncio.TimerHandle | None = None

    def add(self, owner: Expiring, when: float) -> None:
        """``owner.expired()`` at ``when`` (loop time), unless ``owner.waits`` has changed."""
        heapq.heappush(self._due, (when, next(self._seq), weakref.ref(owner), owner.waits))
        if self._timer is None:
            self._timer = self._loop.call_later(RESOLUTION, self._check)

    def _check(self) -> None:
        due = self._due
        now = self._loop.time()
        while due and due[0][0] <= now:
            _, _, ref, waits = heapq.heappop(due)
            owner = ref()
            if owner is not None and owner.waits == waits:
                owner.expired()
        self._timer = self._loop.call_later(RESOLUTION, self._check) if due else None

    def __len__(self) -> int:
        return len(self._due)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
