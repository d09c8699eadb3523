"""What the proxy is doing, as the API process sees it: per-name traffic and tunnel nodes.

The numbers come from the proxy's own Prometheus families in this process's registry
(worker processes' merged in by ``webgateway.workerpool``), not from a second count kept
by the proxy: ``read`` turns one collection into a ``Reading``, ``History`` turns the
counters' growth into one-minute buckets over the last hour, in fixed memory (at most
``MAX_NAMES`` names x 60 minutes x 3 numbers). Both are pure; ``LiveView`` is the thin
shell that samples the registry every ``SAMPLE_EVERY`` seconds and when read.

Where the API runs without the proxy (``webgateway api`` alone) there is nothing to read,
and the views say so (``None``) rather than show zeros. In a fleet each gateway shows
what its own proxy carried.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from webgateway.when import rfc3339

MINUTES: Final = 60
#: Names the history keeps (the proxy gives at most 1,000 per process a series of their own).
MAX_NAMES: Final = 4096
SAMPLE_EVERY: Final = 10.0
#: A read samples again only when the last sample is older than this.
FRESH: Final = 1.0

_CONNS, _IN, _OUT = 0, 1, 2
#: (family, sample) -> which number it is; the bytes family's ``direction`` picks in/out.
_COUNTERS: Final = {
    ("webgateway_proxy_name_connections", "webgateway_proxy_name_connections_total"): _CONNS,
    ("webgateway_proxy_name_bytes", "webgateway_proxy_name_bytes_total"): _IN,
}
_OPEN: Final = "webgateway_proxy_name_open_connections"
_NODES: Final = "webgateway_tunnel_nodes"
_SINCE: Final = "webgateway_tunnel_since_timestamp_seconds"

#: One counter series: (name, worker, which number).
Key = tuple[str, str, int]


@dataclass
class Reading:
    """One collection of the registry, reduced to what the views need."""

    proxy: bool = False  # the proxy's families are there at all
    counters: dict[Key, float] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)  # summed over worker processes
    nodes: dict[str, int] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)  # the earliest, Unix time


def read(metrics: Iterable[Metric]) -> Reading:
    r = Reading()
    for m in metrics:
        if m.name == _OPEN:
            r.proxy = True
        for s in m.samples:
            name = s.labels.get("name")
            if name is None:
                continue
            which = _COUNTERS.get((m.name, s.name))
            if which is not None:
                if s.labels.get("direction") == "out":
                    which = _OUT
                r.counters[(name, s.labels.get("worker", ""), which)] = s.value
            elif m.name == _OPEN:
                r.open[name] = r.open.get(name, 0) + int(s.value)
            elif m.name == _NODES:
                r.nodes[name] = r.nodes.get(name, 0) + int(s.value)
            elif m.name == _SINCE:
                r.since[name] = min(s.value, r.since.get(name, s.value))
    return r


class History:
    """Per name: connections ended and bytes each way, per minute, over the last hour.

    ``feed`` takes the counters' current values; what each grew by since the previous
    feed goes to the current minute. A series seen for the first time, or lower than
    before (a worker restarted, a series dropped and made again), started from zero.
    """

    def __init__(self, max_names: int = MAX_NAMES) -> None:
        self.max_names = max_names
        self._buckets: dict[str, array[int]] = {}  # name -> MINUTES x (conns, in, out)
        self._last: dict[Key, float] = {}
        self._minute: int | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def feed(self, now: float, counters: dict[Key, float]) -> None:
        """``now``: seconds on a clock that never goes back (``time.monotonic``)."""
        self._rotate(int(now // 60))
        assert self._minute is not None
        base = (self._minute % MINUTES) * 3
        for key, value in counters.items():
            before = self._last.get(key)
            grew = value if before is None or value < before else value - before
            if grew:
                b = self._row(key[0])
                if b is not None:
                    b[base + key[2]] += int(grew)
        self._last = dict(counters)

    def _row(self, name: str) -> array[int] | None:
        b = self._buckets.get(name)
        if b is None and len(self._buckets) < self.max_names:
            b = self._buckets[name] = array("q", bytes(8 * 3 * MINUTES))
        return b

    def _rotate(self, minute: int) -> None:
        """Clear the buckets of the minutes that passed; forget names idle for an hour."""
        last = self._minute
        if last is not None and minute <= last:
            return
        self._minute = minute
        if last is None:
            return
        passed = range(last + 1, min(minute, last + MINUTES) + 1)
        for b in self._buckets.values():
            for m in passed:
                i = (m % MINUTES) * 3
                b[i] = b[i + 1] = b[i + 2] = 0
        for name in [n for n, b in self._buckets.items() if not any(b)]:
            del self._buckets[name]

    def last_hour(self, name: str) -> tuple[int, int, int]:
        """(connections, bytes in, bytes out) in the last 60 minutes, this one included."""
        b = self._buckets.get(name)
        if b is None:
            return 0, 0, 0
        return sum(b[0::3]), sum(b[1::3]), sum(b[2::3])


@dataclass(frozen=True)
class Snapshot:
    """What the views show of each name, from one reading."""

    reading: Reading
    history: History

    def traffic(self, label: str) -> dict[str, Any] | None:
        if not self.reading.proxy:
            return None
        conns, bytes_in, bytes_out = self.history.last_hour(label)
        return {
            "connections_now": self.reading.open.get(label, 0),
            "last_hour": {"connections": conns, "bytes_in": bytes_in, "bytes_out": bytes_out},
        }

    def tunnel(self, label: str) -> dict[str, Any] | None:
        if not self.reading.proxy:
            return None
        since = self.reading.since.get(label)
        return {"connected": self.reading.nodes.get(label, 0),
                "since": rfc3339(since) if since is not None else None}


class LiveView:
    """Samples ``registry`` into a ``History`` in the background and on each read."""

    def __init__(self, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self.history = History()
        self._reading = Reading()
        self._sampled: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def sample(self) -> Reading:
        now = self.clock()
        if self._sampled is None or now - self._sampled >= FRESH:
            self._reading = read(self.registry.collect())
            self.history.feed(now, self._reading.counters)
            self._sampled = now
        return self._reading

    def snapshot(self) -> Snapshot:
        return Snapshot(self.sample(), self.history)

    def start(self) -> None:
        """Sample now and every ``SAMPLE_EVERY`` seconds (a timer: nothing to await)."""
        self.sample()
        self._timer = asyncio.get_running_loop().call_later(SAMPLE_EVERY, self.start)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
