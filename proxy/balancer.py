"""Backend choice: least connections, with passive health from failed connects.

No probes: a backend that refused or timed out is skipped for a short, growing
back-off, and retried when it is the only one left, so a name with one flaky backend
still gets through as soon as that backend answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from webgateway.addresses import HostPort

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0


@dataclass
class _State:
    active: int = 0
    failures: int = 0
    down_until: float = 0.0


class Balancer:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[HostPort, _State] = {}

    def _get(self, b: HostPort) -> _State:
        st = self._state.get(b)
        if st is None:
            if len(self._state) > 100_000:  # bound memory over many route changes
                self._state = {k: v for k, v in self._state.items() if v.active}
            st = self._state[b] = _State()
        return st

    def order(self, backends: tuple[HostPort, ...]) -> list[HostPort]:
        """Backends to try, best first: healthy by fewest connections, then the down ones."""
        now = self._clock()
        if len(backends) == 1:
            return [backends[0]]
        return sorted(
            backends,
            key=lambda b: (self._get(b).down_until > now, self._get(b).active),
        )

    def acquire(self, b: HostPort) -> None:
        st = self._get(b)
        st.active += 1
        st.failures = 0
        st.down_until = 0.0

    def release(self, b: HostPort) -> None:
        st = self._get(b)
        st.active = max(0, st.active - 1)

    def failed(self, b: HostPort) -> int:
        """Mark a failed connect; returns the failures in a row (1: it just went down)."""
        st = self._get(b)
        st.failures += 1
        backoff = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(st.failures - 1, 16))
        st.down_until = self._clock() + backoff
        return st.failures

    def active(self, b: HostPort) -> int:
        return self._get(b).active
