"""Reverse tunnels with ``[proxy] workers = 2``: a real worker process, a real node, curl.

The worker process shares the HTTPS port (``SO_REUSEPORT``) and hands every tunnel
connection it accepts (a node's data connection, a browser for a tunnel name) to the
main process, which holds the tunnels (``proxy.handoff``). Each test checks through the
pooled metrics that the worker did accept some, so a pass is not the kernel's luck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.handoff import Sender
from tests.integration.proxy_harness import BackendServer, Gateway, fqdn, run
from tests.integration.test_tunnel import (
    Node,
    _client_hello,
    _connected,
    _hello,
    status,
    tunnel_gateway,
    until,
    with_fallback,
)
from webgateway.fleet import gateway_id
from webgateway.live import read
from webgateway.model import TlsMode

Samples = dict[tuple[str, str], float]


def handoffs(gw: Gateway) -> Samples:
    """``webgateway_proxy_handoffs_total`` by (result, worker), as ``/metrics`` shows it."""
    return {(s.labels["result"], s.labels["worker"]): s.value
            for m in gw.registry.collect() if m.name == "webgateway_proxy_handoffs"
            for s in m.samples if s.name.endswith("_total")}


def ended_in_main(gw: Gateway) -> float:
    """HTTPS connections the main process saw to their end (or into its tunnel pool)."""
    return sum(s.value for m in gw.registry.collect() if m.name == "webgateway_proxy_connections"
               for s in m.samples
               if s.name.endswith("_total") and s.labels.get("worker") == "0")


def both_accepted(gw: Gateway, before: tuple[Samples, float],
                  after: tuple[Samples, float]) -> float:
    """The worker's share of what the main process handled between two ``settled``."""
    sent = after[0][("sent", "1")] - before[0].get(("sent", "1"), 0)
    total = after[1] - before[1]
    assert total > 0
    return sent / total


def gauge(gw: Gateway, name: str, worker: str) -> float | None:
    for m in gw.registry.collect():
        for s in m.samples:
            if s.name == name and s.labels.get("worker") == worker:
                return s.value
    return None


async def settled(gw: Gateway, earlier: float = 0) -> tuple[Samples, float]:
    """Hand-off counts once the worker's latest figures reached the parent (pulled each s),
    and ``ended_in_main`` then. ``earlier``: received from a worker since restarted."""
    last: Samples = {}

    async def probe() -> bool:
        nonlocal last
        last = handoffs(gw)
        return last.get(("sent", "1"), 0) + earlier == last.get(("received", "0"), -1)

    await until(probe, 10, 0.2)
    return last, ended_in_main(gw)


async def codes(gw: Gateway, n: int, label: str = "hidden") -> list[int]:
    """``n`` requests, each on a new connection (``Connection: close``), one curl."""
    cfg = gw.tmp / f"urls-{os.urandom(3).hex()}"
    cfg.write_text(f'url = "https://{fqdn(label)}:{gw.https_port}/"\noutput = "/dev/null"\n' * n)
    _, out, _ = await run("curl", "-sS", "--max-time", "20", "--cacert", str(gw.ca_file),
                          "--resolve", f"{fqdn(label)}:{gw.https_port}:127.0.0.1",
                          "-H", "Connection: close", "-w", "%{http_code}\n", "-K", str(cfg),
                          timeout=120)
    return [int(c) for c in out.split()]


def all_get(gw: Gateway, code: int, n: int = 10) -> object:
    async def probe() -> bool:
        return await codes(gw, n) == [code] * n
    return probe


@contextlib.asynccontextmanager
async def two_processes(tmp: Path, **name_kw: object
                        ) -> AsyncIterator[tuple[Gateway, BackendServer]]:
    async with tunnel_gateway(tmp, {"workers": 2}, **name_kw) as (gw, backend):
        assert list(gw.proxy.pool.workers) == [1]
        yield gw, backend


async def test_every_process_serves_the_tunnel_name_and_the_fleet_sees_one_holder(
        tmp_path: Path) -> None:
    async with two_processes(tmp_path) as (gw, backend):
        assert gw.proxy.engine.tunnels is not None
        node = Node(gw, backend.addr)
        await node.start()
        try:
            await until(_connected(gw, 1), 10)
            await until(all_get(gw, 200), 10)  # the worker follows the store too
            before = await settled(gw)
            got = await codes(gw, 200)
            assert got == [200] * 200
            after = await settled(gw)
            # both processes accepted some (the kernel spreads by the client's port); the
            # node's data connections (one dialled per request served) count too
            assert 0.2 < both_accepted(gw, before, after) < 0.8
            assert after[0].get(("failed", "1"), 0) == 0
            # one node session, held by the main process, recorded once for the fleet
            assert gw.proxy.engine.tunnels.connected("hidden") == 1
            assert read(gw.registry.collect()).nodes == {"hidden": 1}
            assert gauge(gw, "webgateway_tunnels_connected", "1") == 0  # none in the worker
            me = gateway_id(gw.proxy.config)

            async def held() -> bool:
                return dict(await gw.store.list_tunnels()) == {"hidden": frozenset({me})}
            await until(held, 5)
            # the node dies: the 502 page on every new connection, whoever accepted it
            await node.kill()
            await until(lambda: _not_connected(gw), 5)
            before = await settled(gw)
            assert await codes(gw, 60) == [502] * 60
            after = await settled(gw)
            assert 0.1 < both_accepted(gw, before, after) < 0.9

            async def gone() -> bool:
                return not await gw.store.list_tunnels()
            await until(gone, 5)
        finally:
            await node.kill()


async def _not_connected(gw: Gateway) -> bool:
    assert gw.proxy.engine.tunnels is not None
    return gw.proxy.engine.tunnels.connected("hidden") == 0


async def test_a_killed_worker_comes_back_and_the_tunnel_keeps_serving(
        tmp_path: Path) -> None:
    async with two_processes(tmp_path) as (gw, backend):
        node = Node(gw, backend.addr)
        await node.start()
        try:
            await until(_connected(gw, 1), 10)
            await until(all_get(gw, 200), 10)
            earlier = (await settled(gw))[0][("received", "0")]
            victim = gw.proxy.pool.workers[1].pid
            os.kill(victim, signal.SIGKILL)

            async def noticed() -> bool:
                return 1 not in gw.proxy.pool.workers
            await until(noticed, 5)
            assert await codes(gw, 40) == [200] * 40  # the main process alone
            receiver = gw.proxy.receiver
            assert receiver is not None and not receiver.channels  # its channel closed

            async def back() -> bool:
                return gw.proxy.pool.restarts == 1 and 1 in gw.proxy.pool.workers
            await until(back, 15)
            assert gw.proxy.pool.workers[1].pid != victim
            await until(all_get(gw, 200), 10)
            before = await settled(gw, earlier)
            assert await codes(gw, 100) == [200] * 100
            after = await settled(gw, earlier)
            assert 0.1 < both_accepted(gw, before, after) < 0.9
            assert gw.proxy.engine.tunnels is not None
            assert gw.proxy.engine.tunnels.connected("hidden") == 1
        finally:
            await node.kill()


async def test_passthrough_tunnel_name_every_connection_reaches_the_node(
        tmp_path: Path) -> None:
    raw = BackendServer("raw", "127.0.0.1", raw=True)
    await raw.start()
    try:
        async with two_processes(tmp_path, tls=TlsMode.PASSTHROUGH) as (gw, _):
            node = Node(gw, raw.addr)
            await node.start()
            try:
                await until(_connected(gw, 1), 10)
                hello = _client_hello(fqdn("hidden"))
                reached = 0
                before = await settled(gw)
                for i in range(60):
                    _, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
                    w.write(hello)

                    async def arrived(n: int = len(raw.firsts)) -> bool:
                        return len(raw.firsts) > n
                    with contextlib.suppress(AssertionError):
                        # the worker may still be following the store for the first ones
                        await until(arrived, 2 if i < 5 else 5)
                        reached += 1
                    w.close()
                assert reached >= 55 and all(f[0] == 22 for f in raw.firsts)
                after = await settled(gw)
                assert 0.1 < both_accepted(gw, before, after) < 0.9
            finally:
                await node.kill()
    finally:
        await raw.close()


def _fds(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def _hostile(gw: Gateway, hello: bytes, how: int) -> None:
    """A client that leaves early: a split hello then a reset, or a hello and silence."""
    s = socket.socket()
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", gw.https_port))
    if how == 0:  # split over two segments: the worker waits for the rest (HelloPeek)
        await loop.sock_sendall(s, hello[:7])
        await asyncio.sleep(0.02)
        await loop.sock_sendall(s, hello[7:])
        await asyncio.sleep(0.01)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    else:  # whole, then gone at once: it may be gone before the main process peeks
        await loop.sock_sendall(s, hello)
    s.close()


async def test_hundreds_of_handoffs_leak_no_descriptor_in_either_process(
        tmp_path: Path) -> None:
    async with two_processes(tmp_path) as (gw, backend):
        tunnels = gw.proxy.engine.tunnels
        assert tunnels is not None
        # the backend lives in this process: the node's spare connection to it (made
        # after a stream, closed 2 s later) would come and go in this process's count
        node = Node(gw, backend.addr, "--preconnect", "0")
        await node.start()
        try:
            await until(_connected(gw, 1), 10)
            await until(all_get(gw, 200), 10)
            worker = gw.proxy.pool.workers[1].pid

            async def quiet() -> bool:  # nothing open but the node's idle connections
                return (gw.proxy.engine.count == len(tunnels.live) == 8
                        and gauge(gw, "webgateway_proxy_open_connections", "1") == 0)
            await until(quiet, 10, 0.2)
            base_main, base_worker = _fds("self"), _fds(worker)
            before = await settled(gw)
            assert await codes(gw, 200) == [200] * 200
            hello = _client_hello(fqdn("hidden"))
            for i in range(100):
                await _hostile(gw, hello, i % 2)
            after = await settled(gw)
            assert 0.2 < both_accepted(gw, before, after) < 0.8
            await until(quiet, 15, 0.2)
            assert (_fds("self"), _fds(worker)) == (base_main, base_worker)
            # and nothing keeps the worker busy afterwards (a socket left in its epoll set
            # would: the main process still holds the file)
            t0 = _cpu_ticks(worker)
            await asyncio.sleep(1.0)
            assert _cpu_ticks(worker) - t0 <= 10  # of 100 per second
            assert await codes(gw, 20) == [200] * 20
        finally:
            await node.kill()


async def test_a_tunnel_name_with_backends_is_served_by_them_from_every_process(
        tmp_path: Path) -> None:
    """No node: workers still hand over (the main process decides), which falls back."""
    async with with_fallback(tmp_path, {"workers": 2}) as (gw, _, fallback):
        await until(all_get(gw, 200), 10)
        before = await settled(gw)
        assert await codes(gw, 60) == [200] * 60  # no node: the main process's backends
        after = await settled(gw)
        assert 0.1 < both_accepted(gw, before, after) < 0.9
        assert fallback.connections >= 60


async def test_a_worker_that_cannot_hand_over_answers_browsers_and_refuses_nodes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The main process gone (its end of the channel closed): this process plays a worker,
    with no tunnels and a real ``Sender`` whose every send fails."""
    async with tunnel_gateway(tmp_path) as (gw, _):
        engine = gw.proxy.engine
        tunnels, engine.tunnels = engine.tunnels, None  # a worker holds none
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.close()
        sender = Sender(engine, theirs, CollectorRegistry())
        engine.hand_off = sender.send
        try:
            code, body = await status(gw)
            assert code == 502 and b"No backend is reachable" in body  # the page, from here
            with pytest.raises((ssl.SSLError, ConnectionError)):  # a node: a TLS alert
                await _hello(gw, b"")
            outcomes = engine.metrics.outcomes
            await until(lambda: _is(outcomes.get("handoff_failed"), 1), 2)
            assert await status(gw) == (502, body)
            fb = BackendServer("fallback", "127.0.0.1")
            await fb.start()
            try:
                await gw.name("hidden", fb.addr, tunnel=True, tunnel_token_hash=b"x" * 32)
                assert await status(gw) == (200, b"fallback /\n")  # its backends, from here
            finally:
                await fb.close()
            assert caplog.text.count("the main process is gone") == 1  # once per 10 s
            assert engine.count == 0
        finally:
            engine.hand_off = None
            engine.tunnels = tunnels
            sender.close()


async def _is(value: float, want: float) -> bool:
    return value == want
