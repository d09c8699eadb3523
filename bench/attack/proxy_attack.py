"""The proxy under attack, at a larger scale than the test suite: prints the figures for
docs/reliability.md.

usage (from the repository root):
    .venv/bin/python -m bench.attack.proxy_attack [CONNS=2000] [GARBAGE=500]

Starts ``webgateway proxy`` as a subprocess (handshake_timeout 60 s so nothing is reaped
during the run) with a terminated name app.gw.test, then: CONNS slowloris connections
(a few bytes of a TLS record, then silence) -> RSS and fd delta of the proxy, bytes per
connection; CONNS idle connections (nothing sent); GARBAGE garbage ClientHellos; `curl`
against app.gw.test before and during all that; then every attacker closes and the time
until the proxy's fd count is back at its baseline.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.soak.gauges import cpu_seconds, fd_count, raise_nofile, rss_kib
from tests.soak.proxy_siege import (
    Proxy,
    close_all,
    garbage_clients,
    open_idle,
    open_slowloris,
    proxy,
)


async def curls(p: Proxy, n: int) -> tuple[int, float]:
    ok, times = 0, []
    for _ in range(n):
        t0 = time.monotonic()
        ok += await p.curl()
        times.append(time.monotonic() - t0)
    return ok, statistics.median(times) * 1000


async def wait_fds(pid: int, target: int, seconds: float, above: bool) -> tuple[int, float]:
    t0 = time.monotonic()
    n = fd_count(pid)
    while time.monotonic() - t0 < seconds and (n < target if above else n > target):
        await asyncio.sleep(0.05)
        n = fd_count(pid)
    return n, time.monotonic() - t0


async def main(conns: int, garbage: int) -> None:
    print(f"fd soft limit {raise_nofile(conns * 2 + 1000)}")
    rnd = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        async with proxy(Path(tmp), max_connections=conns * 2 + 100,
                         handshake_timeout=60.0) as p:
            pid = p.proc.pid
            ok, ms = await curls(p, 10)
            base_fds, base_rss = await p.settled_fds(), rss_kib(pid)
            print(f"quiet: curl {ok}/10 ok, median {ms:.0f} ms; proxy fds {base_fds}, "
                  f"RSS {base_rss / 1024:.1f} MiB")
            slow = await asyncio.to_thread(open_slowloris, p.port, conns, rnd)
            held, took = await wait_fds(pid, base_fds + conns, 30, above=True)
            await asyncio.sleep(0.5)
            rss = rss_kib(pid)
            print(f"slowloris x{conns}: proxy fds {held} (+{held - base_fds}) in {took:.1f} s, "
                  f"RSS {rss / 1024:.1f} MiB, {(rss - base_rss) * 1024 / conns:.0f} B/connection")
            idle = await asyncio.to_thread(open_idle, p.port, conns)
            await asyncio.sleep(2.0)
            rss2 = rss_kib(pid)
            print(f"idle x{conns}: proxy fds {fd_count(pid)} (silent sockets wait in the kernel, "
                  f"TCP_DEFER_ACCEPT, until they send or its wait ends), RSS {rss2 / 1024:.1f} MiB")
            t0, c0 = time.monotonic(), cpu_seconds(pid)
            closed = await garbage_clients(p.port, garbage, rnd, 20)
            print(f"garbage hellos x{garbage}: {closed} closed by the proxy in "
                  f"{time.monotonic() - t0:.1f} s, proxy CPU {cpu_seconds(pid) - c0:.2f} s")
            ok, ms = await curls(p, 10)
            print(f"under siege: curl {ok}/10 ok, median {ms:.0f} ms")
            p.proc.check()
            close_all(slow)
            close_all(idle)
            back, took = await wait_fds(pid, base_fds, 60, above=False)
            print(f"attackers gone: proxy fds {back} (baseline {base_fds}) after {took:.1f} s, "
                  f"RSS {rss_kib(pid) / 1024:.1f} MiB")
            ok, ms = await curls(p, 5)
            print(f"after: curl {ok}/5 ok, median {ms:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 500))
