"""Failed-authentication limiter: slows token guessing to a few tries a minute per address.

A sliding window of failure times per client address; memory is bounded by evicting
the least recently seen address, so a flood of spoofed sources cannot grow it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float] | None:
        q = self._failures.get(client)
        if q is None:
            return None
        cutoff = self.clock() - self.window
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self._failures[client]
            return None
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may try now."""
        q = self._recent(client)
        if q is None or len(q) < self.limit:
            return 0.0
        return max(0.0, q[0] + self.window - self.clock())

    def failed(self, client: str) -> None:
        q = self._recent(client)
        if q is None:
            q = self._failures[client] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        self._failures.move_to_end(client)
        q.append(self.clock())
