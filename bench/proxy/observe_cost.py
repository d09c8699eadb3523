"""Cost per connection of the access log (``AccessLog.record``) and of the proxy's metrics.

usage: .venv/bin/python bench/proxy/observe_cost.py  (a few seconds on one core)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.accesslog import AccessLog
from proxy.metrics import ProxyMetrics
from proxy.routes import RouteTable
from webgateway.addresses import parse_hostport

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


if __name__ == "__main__":
    asyncio.run(main())
