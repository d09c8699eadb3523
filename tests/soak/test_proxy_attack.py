"""The proxy under 2,000 idle and slowloris connections plus garbage ClientHellos: curl
keeps succeeding, and once the attackers leave, fds (subprocess) and tasks (in-process)
are back at their baseline."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from tests.integration.proxy_harness import curl, fqdn, gateway
from tests.soak.gauges import fd_count, raise_nofile, rss_kib
from tests.soak.proxy_siege import (
    close_all,
    drip,
    garbage_clients,
    open_idle,
    open_slowloris,
    proxy,
)

CONNS = 2000


async def _wait_fds(pid: int, target: int, seconds: float, above: bool) -> int:
    end = time.monotonic() + seconds
    n = fd_count(pid)
    while time.monotonic() < end and (n < target if above else n > target):
        await asyncio.sleep(0.1)
        n = fd_count(pid)
    return n


async def test_idle_slowloris_and_garbage_while_curl_succeeds(tmp_path: Path) -> None:
    assert raise_nofile(CONNS * 2 + 1000) >= CONNS + 500
    rnd = random.Random(5)
    async with proxy(tmp_path, max_connections=CONNS * 2, handshake_timeout=30.0) as p:
        assert await p.curl()
        base_fds = await p.settled_fds()
        base_rss = rss_kib(p.proc.pid)
        idle = open_idle(p.port, CONNS // 2)
        slow = open_slowloris(p.port, CONNS // 2, rnd)
        try:
            # slowloris clients reach the proxy; silent ones wait in the kernel
            # (TCP_DEFER_ACCEPT) until they send something or the handshake timeout passes
            held = await _wait_fds(p.proc.pid, base_fds + CONNS // 2, 20, above=True)
            assert held >= base_fds + CONNS // 2
            rss = rss_kib(p.proc.pid)
            closed = await garbage_clients(p.port, 200, rnd, 10)
            assert closed == 200
            assert drip(slow) == len(slow)
            for _ in range(3):
                assert await p.curl()
            p.proc.check()
            per_conn = (rss - base_rss) * 1024 / max(1, held - base_fds)
            print(f"\nproxy: fds {base_fds} -> {held}, RSS KiB {base_rss} -> {rss} "
                  f"({per_conn:.0f} B per held connection)")
        finally:
            close_all(idle)
            close_all(slow)
        back = await _wait_fds(p.proc.pid, base_fds, 20, above=False)
        assert back <= base_fds, (base_fds, back)
        assert await p.curl()


async def test_tasks_and_connections_return_to_baseline(tmp_path: Path) -> None:
    """In-process, where the engine's own books can be read: nothing left after a siege."""
    raise_nofile(2000)
    rnd = random.Random(6)
    async with gateway(tmp_path) as gw:
        from tests.integration.proxy_harness import BackendServer

        be = BackendServer("app", "127.0.0.1")
        await be.start()
        await gw.name("app", be.addr)
        await gw.certificate("zone", "gw.test", "*.gw.test")
        rc, out, err = await curl(gw, fqdn("app"))
        assert rc == 0, err
        await asyncio.sleep(0.2)
        base_tasks = len(asyncio.all_tasks())
        eng = gw.proxy.engine
        slow = await asyncio.to_thread(open_slowloris, gw.https_port, 300, rnd)
        try:
            for _ in range(100):
                if eng.count >= 300:
                    break
                await asyncio.sleep(0.05)
            assert eng.count >= 300
            assert await garbage_clients(gw.https_port, 100, rnd, 10) == 100
            rc, out, err = await curl(gw, fqdn("app"))
            assert rc == 0 and out == b"app /\n", err
        finally:
            close_all(slow)
        for _ in range(200):
            if eng.count == 0 and not eng.loose and not eng.tasks and not eng.splices:
                break
            await asyncio.sleep(0.05)
        assert (eng.count, len(eng.loose), len(eng.tasks), len(eng.splices)) == (0, 0, 0, 0)
        # the store follower's own waits come and go: a leak is what stays
        for _ in range(100):
            if len(asyncio.all_tasks()) <= base_tasks:
                break
            await asyncio.sleep(0.05)
        assert len(asyncio.all_tasks()) <= base_tasks, asyncio.all_tasks()
        await be.close()
