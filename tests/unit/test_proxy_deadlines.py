"""proxy.deadlines: the one timer behind every pair's handshake, connect and idle deadline."""

from __future__ import annotations

import asyncio
import gc

from proxy.deadlines import RESOLUTION, Deadlines


class Owner:
    __slots__ = ("__weakref__", "fired", "waits")

    def __init__(self) -> None:
        self.waits = 0
        self.fired: list[float] = []

    def expired(self) -> None:
        self.fired.append(asyncio.get_running_loop().time())


def test_due_owners_fire_once_in_deadline_order_and_ended_waits_never() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = Deadlines(loop)
        late, early, ended, gone = Owner(), Owner(), Owner(), Owner()
        t0 = loop.time()
        d.add(late, t0 + 0.6)
        d.add(early, t0 + 0.1)
        d.add(ended, t0 + 0.1)
        d.add(gone, t0 + 0.1)
        ended.waits += 1  # what it waited for happened
        del gone
        gc.collect()
        await asyncio.sleep(0.1 + 2 * RESOLUTION)
        assert len(early.fired) == 1 and not late.fired and not ended.fired
        assert t0 + 0.1 <= early.fired[0] <= t0 + 0.1 + 2 * RESOLUTION
        await asyncio.sleep(0.5 + RESOLUTION)
        assert len(late.fired) == 1 and len(early.fired) == 1 and not ended.fired
        assert len(d) == 0 and d._timer is None  # nothing due: no timer left running
        d.add(early, loop.time())  # a wait set again after the timer stopped
        await asyncio.sleep(2 * RESOLUTION)
        assert len(early.fired) == 2
        d.close()

    asyncio.run(main())


def test_close_drops_what_is_due_and_stops_the_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = Deadlines(loop)
        owner = Owner()
        d.add(owner, loop.time() + 0.05)
        d.close()
        await asyncio.sleep(0.05 + 2 * RESOLUTION)
        assert not owner.fired and len(d) == 0 and d._timer is None

    asyncio.run(main())
