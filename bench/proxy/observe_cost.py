"""Cost per connection of the access log (``AccessLog.record``) and of the proxy's metrics,
and what the API's per-name traffic history costs beside a /metrics render (1,000 names).

usage: .venv/bin/python bench/proxy/observe_cost.py  (a few seconds on one core)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from proxy.accesslog import AccessLog
from proxy.metrics import ProxyMetrics
from proxy.routes import RouteTable
from webgateway.addresses import parse_hostport
from webgateway.live import LiveView

N = 50_000


async def main() -> None:
    backend = parse_hostport("[fd00::5]:8080")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "access.log"
        log = AccessLog(path)
        t0 = time.perf_counter()
        for i in range(N):
            log.record(client=("203.0.113.7", 40000 + i % 20000), sni="alice.gw.example.com",
                       route="alice", mode="terminate", backend=backend, bytes_in=1234,
                       bytes_out=56789, duration=0.25, outcome="ok", reason=None)
        log.close()
        per_line = (time.perf_counter() - t0) / N
        size = os.path.getsize(path) / N
    print(f"access log: {per_line * 1e6:.2f} us per line (flushes included), {size:.0f} B/line")
    metrics = ProxyMetrics(CollectorRegistry(), RouteTable("gw.example.com"))
    t0 = time.perf_counter()
    for _ in range(N):
        metrics.outcome("ok")
        metrics.name_done("alice", 1234, 56789)
    per_conn = (time.perf_counter() - t0) / N
    print(f"metrics: {per_conn * 1e6:.2f} us per connection (outcome + the name's series)")
    live_sample_cost()


class _Open:
    def __init__(self) -> None:
        self.per_name: dict[str, int] = {}
        self.tunnels = None


def live_sample_cost(names: int = 1000, rounds: int = 200) -> None:
    """CPU of one sample of the API's LiveView (every 10 s and on reads, at most once a
    second) beside one /metrics render of the same registry: both collect every family."""
    registry, engine = CollectorRegistry(), _Open()
    metrics = ProxyMetrics(registry, RouteTable("gw.example.com"), engine)
    for i in range(names):
        metrics.name_done(f"n{i}", 100, 1000)
        engine.per_name[f"n{i}"] = 1
    now = [0.0]
    view = LiveView(registry, clock=lambda: now[0])
    t0 = time.process_time()
    for i in range(rounds):
        now[0] += 1.0
        metrics.name_done(f"n{i % names}", 1, 1)
        view.sample()
    sample = (time.process_time() - t0) / rounds
    t0 = time.process_time()
    for _ in range(rounds):
        generate_latest(registry)
    render = (time.process_time() - t0) / rounds
    print(f"live traffic, {names} names: {sample * 1e3:.1f} ms CPU per sample; "
          f"a /metrics render of the same registry: {render * 1e3:.1f} ms CPU")


if __name__ == "__main__":
    asyncio.run(main())
