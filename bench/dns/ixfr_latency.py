#!/usr/bin/env python3
"""API write -> answered by Knot and NSD secondaries (NOTIFY, then IXFR): p50/p99.

usage: .venv/bin/python bench/dns/ixfr_latency.py [WRITES=50] [GAP=0.6]

dnsd and the API run in this process (127.0.0.30), Knot (127.0.0.31) and NSD (127.0.0.32)
are started as secondaries with the configs of tests/integration/test_secondaries.py,
on free high ports, and stopped by PID. Each write is one PUT /v1/names/{label}; the clock
stops when both secondaries answer the new name (polled every 5 ms). GAP seconds between
writes keeps each one a single change (the NOTIFY debounce is 0.5 s per secondary).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.integration.test_secondaries import (
    KNOT,
    NSD,
    PRIMARY,
    SECRET,
    ask,
    knot_conf,
    nsd_conf,
    wait_for_zone,
)
from tests.procs import Proc
from tests.support import ZONE, free_port, make_config, services


async def main(writes: int, gap: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wg-ixfr-"))
    port, kport, nport = free_port(host=PRIMARY), free_port(host=KNOT), free_port(host=NSD)
    cfg = make_config(tmp, api={"max_names_per_owner": writes + 10}, dns={
        "listen": [f"{PRIMARY}:{port}"],
        "secondaries": [f"{KNOT}:{kport}", f"{NSD}:{nport}"],
        "tsig": {"name": "xfr", "secret": SECRET}})
    async with services(cfg, "api", "dnsd"):
        api = f"http://127.0.0.1:{cfg.api.listen.port}"
        admin = cfg.api.admin_token_file.read_text().strip()
        (tmp / "knot").mkdir()
        (tmp / "nsd").mkdir()
        knot = Proc("knotd", ["knotd", "-c", str(knot_conf(tmp / "knot", kport, port))],
                    tmp / "knot.log")
        nsd = Proc("nsd", ["nsd", "-d", "-c", str(nsd_conf(tmp / "nsd", nport, port))],
                   tmp / "nsd.out")
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(api + "/v1/owners", json={"name": "bench"},
                                     headers={"Authorization": f"Bearer {admin}"}) as r:
                    token = (await r.json())["token"]
                await asyncio.to_thread(wait_for_zone, KNOT, kport, knot)
                await asyncio.to_thread(wait_for_zone, NSD, nport, nsd)
                await asyncio.sleep(1)
                lat: dict[str, list[float]] = {"knot": [], "nsd": []}
                for i in range(writes):
                    t0 = time.monotonic()
                    async with http.put(f"{api}/v1/names/w{i}", json={"backends": ["127.0.0.1:9"]},
                                        headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 201, await r.text()
                    todo = {"knot": (KNOT, kport), "nsd": (NSD, nport)}
                    while todo and time.monotonic() - t0 < 10:
                        for who, (host, p) in list(todo.items()):
                            if (await ask(host, p, f"w{i}.{ZONE}")).answer:
                                lat[who].append(time.monotonic() - t0)
                                del todo[who]
                        await asyncio.sleep(0.005)
                    assert not todo, f"write {i}: no answer from {list(todo)}"
                    await asyncio.sleep(gap)
            for who, xs in lat.items():
                xs.sort()
                p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
                print(f"{who}: {len(xs)} writes, p50 {statistics.median(xs) * 1000:.0f} ms, "
                      f"p99 {p99 * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms")
        finally:
            knot.stop()
            nsd.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50,
                     float(sys.argv[2]) if len(sys.argv) > 2 else 0.6))
