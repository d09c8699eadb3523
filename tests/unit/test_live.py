"""Per-name traffic over the last hour, from counter readings (pure: values and a clock)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.metrics import OTHER, ProxyMetrics
from proxy.routes import RouteTable
from tests.support import ZONE
from webgateway.live import MINUTES, History, Key, LiveView, Snapshot, read
from webgateway.workerpool import PooledMetrics, WorkerPool, families

CONNS, IN, OUT = 0, 1, 2


def counters(**per_name: tuple[int, int, int]) -> dict[Key, float]:
    return {(name, "", which): float(v[which]) for name, v in per_name.items()
            for which in (CONNS, IN, OUT)}


def test_growth_goes_to_the_minute_and_ages_out_after_an_hour() -> None:
    h = History()
    h.feed(0.0, counters(a=(1, 100, 1000)))  # seen first: all of it is new
    h.feed(30.0, counters(a=(3, 300, 3000)))
    assert h.last_hour("a") == (3, 300, 3000)
    h.feed(61.0 * 59, counters(a=(4, 400, 4000), b=(1, 1, 1)))
    assert h.last_hour("a") == (4, 400, 4000) and h.last_hour("b") == (1, 1, 1)
    h.feed(60.0 * 60 + 1, counters(a=(4, 400, 4000), b=(1, 1, 1)))  # minute 0 is an hour old
    assert h.last_hour("a") == (1, 100, 1000)
    h.feed(60.0 * 200, counters(a=(4, 400, 4000), b=(1, 1, 1)))  # idle for hours
    assert h.last_hour("a") == (0, 0, 0) and len(h) == 0  # forgotten: memory stays bounded
    assert h.last_hour("never") == (0, 0, 0)


def test_a_counter_that_restarts_counts_from_zero_and_a_clock_going_back_is_harmless() -> None:
    h = History()
    h.feed(0.0, {("a", "1", IN): 500.0})
    h.feed(10.0, {("a", "1", IN): 20.0})  # worker 1 restarted: 20 new bytes, not -480
    h.feed(5.0, {("a", "1", IN): 30.0})  # an earlier time: counted in the current minute
    assert h.last_hour("a") == (0, 530, 0)


def test_names_are_capped() -> None:
    h = History(max_names=2)
    h.feed(0.0, counters(a=(1, 1, 1), b=(1, 1, 1), c=(1, 1, 1)))
    assert len(h) == 2 and h.last_hour("c") == (0, 0, 0)
    assert len(h._buckets["a"]) == 3 * MINUTES  # fixed size per name


class _Engine:
    def __init__(self) -> None:
        self.per_name: dict[str, int] = {}
        self.tunnels = None


def test_read_sums_worker_processes_and_sees_open_connections() -> None:
    """The reading of a registry where the proxy runs with one worker process."""
    table = RouteTable(ZONE)
    engine = _Engine()
    pool = WorkerPool("proxy", "proxy.workers", "x:y", 1)
    registry = CollectorRegistry()
    own = CollectorRegistry()
    registry.register(PooledMetrics(own, pool))
    parent = ProxyMetrics(own, table, engine)
    parent.name_done("a", 10, 20)
    engine.per_name["a"] = 2
    worker_registry = CollectorRegistry()
    worker_engine = _Engine()
    worker = ProxyMetrics(worker_registry, table, worker_engine)
    worker.name_done("a", 1, 2)
    worker.name_done("b", 5, 5)
    worker_engine.per_name["a"] = 1
    from webgateway.workerpool import _Worker

    w = _Worker(1, None, None, 0.0, families(worker_registry))  # type: ignore[arg-type]
    pool.workers[1] = w
    r = read(registry.collect())
    assert r.proxy and r.open == {"a": 3}
    assert r.counters[("a", "0", CONNS)] == 1 and r.counters[("a", "1", OUT)] == 2
    h = History()
    h.feed(0.0, r.counters)
    snap = Snapshot(r, h)
    assert snap.traffic("a") == {"connections_now": 3,
                                 "last_hour": {"connections": 2, "bytes_in": 11, "bytes_out": 22}}
    assert snap.traffic("b") == {"connections_now": 0,
                                 "last_hour": {"connections": 1, "bytes_in": 5, "bytes_out": 5}}
    assert snap.tunnel("a") == {"connected": 0, "since": None}


def test_without_the_proxy_in_the_process_the_views_say_unknown() -> None:
    view = LiveView(CollectorRegistry(), clock=lambda: 0.0)
    snap = view.snapshot()
    assert snap.traffic("a") is None and snap.tunnel("a") is None


def test_open_connections_families_are_bounded_too() -> None:
    registry = CollectorRegistry()
    engine = _Engine()
    ProxyMetrics(registry, RouteTable(ZONE), engine, max_names=2)
    engine.per_name.update({"a": 1, "b": 2, "c": 3, "d": 4})
    r = read(registry.collect())
    assert r.open == {"a": 1, "b": 2, OTHER: 7}


def test_a_read_samples_at_most_once_a_second() -> None:
    now = [0.0]
    registry = CollectorRegistry()
    engine = _Engine()
    m = ProxyMetrics(registry, RouteTable(ZONE), engine)
    view = LiveView(registry, clock=lambda: now[0])
    m.name_done("a", 1, 1)
    assert view.snapshot().traffic("a")["last_hour"]["connections"] == 1  # type: ignore[index]
    m.name_done("a", 1, 1)
    now[0] = 0.5
    assert view.snapshot().traffic("a")["last_hour"]["connections"] == 1  # type: ignore[index]
    now[0] = 1.0
    assert view.snapshot().traffic("a")["last_hour"]["connections"] == 2  # type: ignore[index]
