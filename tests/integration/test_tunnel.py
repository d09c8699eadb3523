"""Reverse tunnels on loopback: a real proxy, real ``webgateway tunnel`` processes, curl.

The node is a separate process (``python -m webgateway.cli tunnel``) so killing it is a
real crash: the kernel closes its sockets, nothing says goodbye. Hostile peers are raw
TLS clients speaking the tunnel ALPN with wrong tokens and garbage frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from proxy.service import ProxyService
from tests.integration.proxy_harness import (
    BackendServer,
    Gateway,
    client_unread,
    curl,
    cycles_kept,
    fqdn,
    gateway,
    receive,
    upload,
)
from tests.support import ZONE, free_port
from tunnel import wire
from webgateway.live import read
from webgateway.tokens import hash_token

TOKEN = "wg_tunnel-token-of-hidden"


class Node:
    """A ``webgateway tunnel`` process, started and stopped by PID."""

    def __init__(self, gw: Gateway, to: str, *extra: str, token: str = TOKEN,
                 name: str = "hidden") -> None:
        self.cmd = [sys.executable, "-m", "webgateway.cli", "tunnel",
                    "--gateway", f"127.0.0.1:{gw.https_port}", "--server-name", ZONE,
                    "--ca", str(gw.ca_file), "--name", name, "--token", token, "--to", to,
                    "--log-level", "debug", *extra]
        self.log = gw.tmp / f"node-{os.urandom(3).hex()}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=asyncio.subprocess.DEVNULL, stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=asyncio.subprocess.STDOUT)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await asyncio.wait_for(self.proc.wait(), 10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def until(probe: object, seconds: float, step: float = 0.05) -> float:
    """Poll an async probe until it is true; the seconds it took (fails after ``seconds``)."""
    t0 = time.monotonic()
    while True:
        if await probe():  # type: ignore[operator]
            return time.monotonic() - t0
        if time.monotonic() - t0 > seconds:
            raise AssertionError(f"not true after {seconds} s")
        await asyncio.sleep(step)


async def status(gw: Gateway, label: str = "hidden", path: str = "/") -> tuple[int, bytes]:
    _, out, _ = await curl(gw, fqdn(label), path, "-o", "-", "-w", "\n%{http_code}")
    body, _, code = out.rpartition(b"\n")
    return int(code or 0), body


@contextlib.asynccontextmanager
async def tunnel_gateway(tmp: Path, proxy: dict[str, Any] | None = None, **name_kw: Any,
                         ) -> AsyncIterator[tuple[Gateway, BackendServer]]:
    backend = BackendServer("hidden-backend", "127.0.0.1")
    await backend.start()
    try:
        async with gateway(tmp, **(proxy or {})) as gw:
            await gw.certificate("zone", f"*.{ZONE}", ZONE)
            await gw.name("hidden", tunnel=True, tunnel_token_hash=hash_token(TOKEN), **name_kw)
            yield gw, backend
    finally:
        await backend.close()


@pytest.fixture
async def tgw(tmp_path: Path) -> AsyncIterator[tuple[Gateway, BackendServer]]:
    async with tunnel_gateway(tmp_path) as pair:
        yield pair


async def test_served_through_the_tunnel_kill_and_restart(
        tgw: tuple[Gateway, BackendServer]) -> None:
    gw, backend = tgw
    assert (await status(gw))[0] == 502  # no node yet: the 502 page
    node = Node(gw, backend.addr)
    await node.start()
    try:
        await until(lambda: _ok(gw), 10)
        code, body = await status(gw, path="/through")
        assert (code, body) == (200, b"hidden-backend /through\n")
        assert gw.proxy.engine.tunnels is not None
        assert gw.proxy.engine.tunnels.connected("hidden") == 1
        held = await _hold(gw, 5)  # the pool of 8 falls below its low-water mark of 4: a refill
        await until(lambda: _has(node, "TLS session resumed"), 5)  # refills resume TLS
        for w in held:
            w.transport.abort()
        # the node crashes: 502 within a second
        await node.kill()
        took = await until(lambda: _code(gw, 502), 1.0, 0.02)
        assert took < 1.0
        # started again: served within a second of its start
        node2 = Node(gw, backend.addr)
        t0 = time.monotonic()
        await node2.start()
        await until(lambda: _ok(gw), 5, 0.02)
        startup = time.monotonic() - t0
        assert startup < 3.0, startup  # python start-up included; the dial itself is ms
        await node2.kill()
        await until(lambda: _count_is(gw, 0), 5)  # every connection accounted for
        assert not gw.proxy.engine.tunnels.live and not gw.proxy.engine.tunnels.sessions
    finally:
        await node.kill()
    assert TOKEN not in node.output()


async def _ok(gw: Gateway) -> bool:
    return (await status(gw))[0] == 200


async def _code(gw: Gateway, code: int) -> bool:
    return (await status(gw))[0] == code


async def test_rotated_token_drops_the_pooled_connections(
        tgw: tuple[Gateway, BackendServer]) -> None:
    gw, backend = tgw
    node = Node(gw, backend.addr)
    await node.start()
    try:
        await until(lambda: _ok(gw), 10)
        await gw.store.set_tunnel_token("hidden", 1, hash_token("wg_a-new-token"))
        await gw.synced()
        assert (await status(gw))[0] == 502  # the old token's connections are refused at once
        await until(lambda: _has(node, "token is not valid"), 5)  # and so are its redials
    finally:
        await node.kill()


async def _has(node: Node, text: str) -> bool:
    return text in node.output()


async def test_gateway_restart_node_comes_back_by_itself(
        tgw: tuple[Gateway, BackendServer]) -> None:
    gw, backend = tgw
    node = Node(gw, backend.addr, "--pool", "1")
    await node.start()
    try:
        await until(lambda: _ok(gw), 10)
        old = gw.proxy
        await old.stop()
        new = ProxyService(old.config, gw.store, CollectorRegistry())
        await new.start()
        gw.proxy = new
        try:
            took = await until(lambda: _ok(gw), 10, 0.05)
            assert took < 5.0
        finally:
            await new.stop()
            gw.proxy = old
    finally:
        await node.kill(signal.SIGTERM)
    assert "tunnel for hidden is up" in node.output()


async def test_proxy_protocol_and_several_nodes(tmp_path: Path) -> None:
    async with tunnel_gateway(tmp_path, proxy_protocol=True) as (gw, backend):
        other = BackendServer("second-node", "127.0.0.1")
        await other.start()
        a, b = Node(gw, backend.addr), Node(gw, other.addr)
        started = time.time()
        await a.start()
        await b.start()
        try:
            assert gw.proxy.engine.tunnels is not None
            await until(_connected(gw, 2), 10)
            # what status and the dashboard read: nodes per name and since when, from /metrics
            seen_now = read(gw.registry.collect())
            assert seen_now.nodes == {"hidden": 2}
            assert started <= seen_now.since["hidden"] <= time.time()
            assert gw.registry.get_sample_value("webgateway_tunnels_connected") >= 2
            seen = set()
            for _ in range(12):
                code, body = await status(gw)
                assert code == 200
                seen.add(body.split()[0])
            assert seen == {b"hidden-backend", b"second-node"}  # spread over both nodes
            assert all(f.startswith(b"\r\n\r\n\x00\r\nQUIT\n") for f in backend.firsts)
            assert b"\x7f\x00\x00\x01" in backend.firsts[0]  # the client's address
            # one node dies: the other serves every request, at once
            await a.kill()
            for _ in range(6):
                assert (await status(gw))[0] == 200
            await until(_connected(gw, 1), 5)
            assert read(gw.registry.collect()).nodes == {"hidden": 1}
        finally:
            await a.kill()
            await b.kill()
            await other.close()


def _connected(gw: Gateway, n: int) -> object:
    async def probe() -> bool:
        assert gw.proxy.engine.tunnels is not None
        return gw.proxy.engine.tunnels.connected("hidden") == n

    return probe


async def test_passthrough_carries_the_raw_tls(tmp_path: Path) -> None:
    from webgateway.model import TlsMode

    async with tunnel_gateway(tmp_path, tls=TlsMode.PASSTHROUGH) as (gw, _):
        raw = BackendServer("raw", "127.0.0.1", raw=True)
        await raw.start()
        node = Node(gw, raw.addr)
        await node.start()
        try:
            await until(_connected(gw, 1), 10)
            ctx = ssl.create_default_context()
            with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)):
                async with asyncio.timeout(2):
                    await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                                  server_hostname=fqdn("hidden"))
            assert raw.firsts and raw.firsts[0][0] == 22  # a TLS record: the ClientHello
            assert fqdn("hidden").encode() in raw.firsts[0]
        finally:
            await node.kill()
            await raw.close()


def _client_hello(server_name: str) -> bytes:
    """The first flight of a real TLS client (its ClientHello), taken from an ssl.SSLObject."""
    obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                                server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


async def _hello(gw: Gateway, payload: bytes, server_name: str = ZONE) -> bytes:
    """A hostile node: TLS with the tunnel ALPN, then ``payload``; what the gateway answers."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    ctx.set_alpn_protocols([wire.ALPN])
    r, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                         server_hostname=server_name)
    try:
        w.write(payload)
        async with asyncio.timeout(5):
            return await r.read(4096)
    finally:
        w.close()


async def test_hostile_tunnel_clients_are_refused_and_throttled(
        tgw: tuple[Gateway, BackendServer], caplog: pytest.LogCaptureFixture) -> None:
    gw, _ = tgw
    session = bytes(16)
    await gw.name("other", tunnel=True, tunnel_token_hash=hash_token("wg_other-token"))
    wrong = await _hello(gw, wire.encode_hello("hidden", "wg_wrong", session))
    assert wrong.startswith(bytes([wire.Kind.REFUSE])) and b"token is not valid" in wrong
    other = await _hello(gw, wire.encode_hello("hidden", "wg_other-token", session))
    assert b"token is not valid" in other  # a token of another name
    missing = await _hello(gw, wire.encode_hello("nosuch", TOKEN, session))
    assert missing[3:] == wrong[3:].replace(b"hidden", b"nosuch")  # nothing learnt
    assert b"exceeds" in await _hello(gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"not supported" in await _hello(gw, b"\x01\x00\x02\x09\x00")
    assert TOKEN not in caplog.text and "wg_wrong" not in caplog.text
    # after 20 failures in a minute the address is refused before any TLS
    for _ in range(20):
        try:
            await _hello(gw, b"\x07\x00\x00")
        except (ssl.SSLError, ConnectionError):
            break
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _hello(gw, wire.encode_hello("hidden", TOKEN, session))
    warnings = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 0 < len(warnings) <= 21
    # browsers are not affected
    assert (await status(gw))[0] == 502


async def test_half_open_tunnel_handshakes_are_bounded(tmp_path: Path) -> None:
    async with gateway(tmp_path, handshake_timeout=1.0) as gw:
        await gw.certificate("zone", f"*.{ZONE}", ZONE)
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        ctx.set_alpn_protocols([wire.ALPN])
        base = gw.proxy.engine.count
        silent = []
        for _ in range(300):  # TLS, then never a HELLO; then the address is throttled
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                silent.append(await asyncio.open_connection(
                    "127.0.0.1", gw.https_port, ssl=ctx, server_hostname=ZONE))
        assert len(silent) >= 20
        await until(lambda: _count_is(gw, base), 5, 0.1)  # each one timed out and closed
        for r, w in silent:
            answer = await r.read()
            assert answer == b"" or b"no HELLO in time" in answer  # refused, then closed
            w.close()
        with pytest.raises((ssl.SSLError, ConnectionError)):  # the address is throttled now
            await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                          server_hostname=ZONE)
        assert gw.proxy.engine.tunnels is not None and not gw.proxy.engine.tunnels.live


async def _count_is(gw: Gateway, n: int) -> bool:
    return gw.proxy.engine.count == n


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


async def test_slow_client_back_pressure_end_to_end(
        tgw: tuple[Gateway, BackendServer]) -> None:
    """A client that stops reading a 64 MiB answer: neither the gateway nor the node holds it."""
    gw, backend = tgw
    node = Node(gw, backend.addr)
    await node.start()
    try:
        await until(_connected(gw, 1), 10)
        assert node.proc is not None
        await until(lambda: _ok(gw), 5)
        rss0 = _rss_kib(node.proc.pid)
        size = 64 << 20
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        r, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                             server_hostname=fqdn("hidden"), limit=1 << 16)
        w.write(f"GET /big/{size} HTTP/1.1\r\nHost: {fqdn('hidden')}\r\n\r\n".encode())
        got = len(await r.readexactly(1 << 20))
        await asyncio.sleep(1.5)  # the client stalls; everything upstream must stall too
        buffered = sum(sp.held() for sp in gw.proxy.engine.splices)
        grew = _rss_kib(node.proc.pid) - rss0
        assert buffered < 2 << 20, buffered  # the gateway: write buffers only
        assert grew < 16 << 10, grew  # the node: KiB of RSS, far from 64 MiB
        async with asyncio.timeout(60):
            while chunk := await r.read(1 << 20):
                got += len(chunk)
                if got >= size:
                    break
        assert got >= size  # and the whole answer arrives once the client reads again
        w.close()
    finally:
        await node.kill()


async def test_a_backend_that_does_not_read_stops_the_gateway_reading_the_client(
        tgw: tuple[Gateway, BackendServer]) -> None:
    """The upload direction through a tunnel: the node's backend reads nothing, so the
    node stops reading the tunnel and the gateway stops reading the client (it holds
    KiB, not the upload); once the backend reads, every byte arrives."""
    gw, _ = tgw
    loop = asyncio.get_running_loop()
    size = 32 << 20
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        node = Node(gw, f"127.0.0.1:{listener.getsockname()[1]}", "--preconnect", "0")
        await node.start()
        try:
            await until(_connected(gw, 1), 10)
            ctx = ssl.create_default_context(cafile=str(gw.ca_file))
            r, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                                 server_hostname=fqdn("hidden"))
            sending = asyncio.ensure_future(upload(w, size))
            backend, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
            with backend:
                held = await client_unread(gw.proxy.engine, 1.5, size)  # backend: no reads
                assert held < 1 << 20 and not sending.done()
                got = await receive(backend, size)
                assert got == (size, await asyncio.wait_for(sending, 30))
                await loop.sock_sendall(backend, b"stored")
            assert await asyncio.wait_for(r.read(), 30) == b"stored"
            w.close()
        finally:
            await node.kill()


async def test_node_refuses_a_gateway_whose_certificate_does_not_verify(
        tgw: tuple[Gateway, BackendServer]) -> None:
    gw, backend = tgw
    stranger = gw.tmp / "other-ca.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(stranger))
    node = Node(gw, backend.addr)
    node.cmd[node.cmd.index("--ca") + 1] = str(stranger)
    await node.start()
    try:
        await asyncio.sleep(1.5)
        assert gw.proxy.engine.tunnels is not None
        assert gw.proxy.engine.tunnels.connected("hidden") == 0
        assert (await status(gw))[0] == 502
    finally:
        await node.kill(signal.SIGTERM)
    assert "certificate does not verify" in node.output()


FAST = wire.Liveness(ping_every=0.1, dead_after=0.4, check_every=0.1)


async def test_gateway_drops_a_silent_node_and_keeps_a_pinging_one(
        tgw: tuple[Gateway, BackendServer]) -> None:
    """Dead-tunnel detection, with the timings scaled down (production: 20 s + 5 s)."""
    gw, backend = tgw
    from tunnel.gateway import Tunnels
    from tunnel.node import run_node
    from tunnel.settings import load

    table = gw.proxy.table
    gw.proxy.engine.tunnels = tunnels = Tunnels(lambda label: table.names.get(label),
                                                liveness=FAST)
    settings = load({"gateway": [f"127.0.0.1:{gw.https_port}"], "server_name": ZONE,
                     "ca": str(gw.ca_file), "name": "hidden", "token": TOKEN,
                     "to": backend.addr, "pool": 1})
    node = asyncio.get_running_loop().create_task(run_node(settings, FAST))
    try:
        await until(_connected(gw, 1), 5)
        # a node that authenticates, then falls silent (a NAT forgot it, a cable pulled)
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        ctx.set_alpn_protocols([wire.ALPN])
        r, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                             server_hostname=ZONE)
        w.write(wire.encode_hello("hidden", TOKEN, bytes(16)))
        assert (await r.readexactly(3)) == wire.frame(wire.Kind.ACCEPT)
        assert tunnels.connected("hidden") == 2
        t0 = time.monotonic()
        async with asyncio.timeout(3):
            assert await r.read() == b""  # dropped by the gateway
        assert time.monotonic() - t0 < FAST.dead_after + FAST.check_every + 0.5
        w.close()
        await asyncio.sleep(1.0)  # the pinging node is still there, and serves
        assert tunnels.connected("hidden") == 1
        assert (await status(gw))[0] == 200
    finally:
        node.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node


async def test_node_redials_a_gateway_that_stops_answering(tmp_path: Path) -> None:
    """A gateway that accepts, then never answers a PING: the node drops it and dials again."""
    import trustme

    from tunnel.node import run_node
    from tunnel.settings import load

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(ZONE).configure_cert(sctx)
    sctx.set_alpn_protocols([wire.ALPN])
    accepted: list[float] = []

    async def mute_gateway(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1024)  # the HELLO
        w.write(wire.frame(wire.Kind.ACCEPT))
        accepted.append(time.monotonic())
        with contextlib.suppress(ConnectionError):
            while await r.read(1024):  # PINGs, never answered
                pass
        w.close()

    server = await asyncio.start_server(mute_gateway, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    settings = load({"gateway": [f"127.0.0.1:{port}"], "server_name": ZONE,
                     "ca": str(ca_file), "name": "hidden", "token": TOKEN,
                     "to": "127.0.0.1:9", "pool": 1})
    node = asyncio.get_running_loop().create_task(run_node(settings, FAST))
    try:
        await until(lambda: _at_least(accepted, 3), 5)
        gaps = [b - a for a, b in itertools.pairwise(accepted)]
        assert all(FAST.dead_after <= g < FAST.dead_after + FAST.check_every + 1.0 for g in gaps)
    finally:
        node.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node
        server.close()


async def _at_least(items: list[float], n: int) -> bool:
    return len(items) >= n


@contextlib.asynccontextmanager
async def with_fallback(tmp: Path, proxy: dict[str, Any] | None = None,
                        ) -> AsyncIterator[tuple[Gateway, BackendServer, BackendServer]]:
    """A tunnel gateway whose tunnel name also lists an ordinary backend (the third)."""
    fallback = BackendServer("fallback", "127.0.0.1")
    await fallback.start()
    try:
        async with tunnel_gateway(tmp, proxy) as (gw, backend):
            await gw.name("hidden", fallback.addr, tunnel=True,
                          tunnel_token_hash=hash_token(TOKEN))
            yield gw, backend, fallback
    finally:
        await fallback.close()


async def test_a_tunnel_name_falls_back_to_its_ordinary_backends(tmp_path: Path) -> None:
    async with with_fallback(tmp_path) as (gw, backend, _):
        assert await status(gw) == (200, b"fallback /\n")  # no node: the backend
        node = Node(gw, backend.addr)
        await node.start()
        try:
            await until(_connected(gw, 1), 10)
            assert await status(gw) == (200, b"hidden-backend /\n")  # a node: its tunnel
        finally:
            await node.kill()


def _idle(gw: Gateway, n: int, at_least: bool = False) -> Any:
    async def probe() -> bool:
        assert gw.proxy.engine.tunnels is not None
        idle = gw.proxy.engine.tunnels.idle_count.get("hidden", 0)
        return idle >= n if at_least else idle == n
    return probe


async def _hold(gw: Gateway, n: int, active: int = 0) -> list[asyncio.StreamWriter]:
    """``n`` clients at once, each holding a tunnel stream (TLS done, no request yet), on
    top of ``active`` held already."""
    tunnels = gw.proxy.engine.tunnels
    assert tunnels is not None
    before = tunnels.idle_count.get("hidden", 0)
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    held = []
    for _ in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                             server_hostname=fqdn("hidden"))
        held.append(w)

    async def taken() -> bool:
        return _active(gw) == active + n

    await until(taken, 5, 0.01)
    assert before >= n
    return held


def _active(gw: Gateway) -> int:
    assert gw.proxy.engine.tunnels is not None
    return sum(s.active for s in gw.proxy.engine.tunnels.sessions.get("hidden", {}).values())


async def test_pool_tops_up_below_its_low_water_mark_and_shrinks_when_quiet(
        tgw: tuple[Gateway, BackendServer]) -> None:
    gw, backend = tgw
    node = Node(gw, backend.addr, "--pool", "4", "--low-water", "2", "--shrink-after", "1")
    await node.start()
    try:
        await until(_idle(gw, 4), 10)
        tunnels = gw.proxy.engine.tunnels
        assert tunnels is not None
        first = set(tunnels.live)
        for _ in range(5):  # back to back: each client gets a connection its forerunner used
            assert (await status(gw))[0] == 200
            await until(_idle(gw, 4), 2, 0.01)  # back once END went both ways
            assert tunnels.live == first
        held = await _hold(gw, 2)  # two at once: still at the low-water mark, no dial
        await asyncio.sleep(0.3)
        assert tunnels.live == first
        held += await _hold(gw, 1, active=2)  # the third goes below it: a batch of 3
        await until(_idle(gw, 4), 5, 0.01)
        assert len(tunnels.live) == 7
        for w in held:
            w.transport.abort()
        await until(_idle(gw, 7), 5, 0.01)  # the three streams' connections come back
        await until(_idle(gw, 1), 5)  # a quiet second: one idle connection is kept
        assert (await status(gw))[0] == 200  # it serves the next client and refills
        await until(_idle(gw, 4, at_least=True), 5, 0.01)
    finally:
        await node.kill()


async def test_clients_that_leave_during_the_open_give_the_stream_back(
        tgw: tuple[Gateway, BackendServer]) -> None:
    """A TLS client that completes the handshake and leaves at once (``webgateway check``
    asking for the certificate does exactly this) must not keep the node's session in use:
    it did, so a dead node's name stayed "held" forever and the fleet kept steering to it."""
    gw, backend = tgw
    node = Node(gw, backend.addr)
    await node.start()
    try:
        await until(lambda: _ok(gw), 10)
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        for _ in range(20):
            _, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                                 server_hostname=fqdn("hidden"))
            w.transport.abort()
        tunnels = gw.proxy.engine.tunnels
        assert tunnels is not None

        async def idle() -> bool:
            return all(s.active == 0 for s in tunnels.sessions.get("hidden", {}).values())

        await until(idle, 3)
        await node.kill()
        await until(lambda: _not_held(gw), 2)
    finally:
        await node.kill()


async def test_the_gateway_keeps_at_most_its_idle_cap_and_the_node_is_not_throttled(
        tmp_path: Path) -> None:
    async with tunnel_gateway(tmp_path, {"tunnel_max_idle_per_name": 2,
                                         "tunnel_failures_per_minute": 1}) as (gw, backend):
        node = Node(gw, backend.addr, "--pool", "4")
        await node.start()
        try:
            await until(_idle(gw, 2), 10)
            await until(lambda: _has(node, "keeps no more idle connections for hidden"), 5)
            for _ in range(4):  # refused for the cap, but never throttled for it
                assert (await status(gw))[0] == 200
            await until(_idle(gw, 2), 5)
        finally:
            await node.kill()


async def test_a_node_whose_backend_is_down_gets_the_502_page(
        tgw: tuple[Gateway, BackendServer]) -> None:
    gw, _ = tgw
    closed = free_port()  # nothing listens there
    node = Node(gw, f"127.0.0.1:{closed}")
    await node.start()
    try:
        await until(_connected(gw, 1), 10)
        for _ in range(3):  # the client's request went ahead of OPENED, the page still comes
            code, body = await status(gw)
            assert code == 502 and b"No backend is reachable" in body
        assert "cannot connect to 127.0.0.1" in node.output()
        await until(lambda: _no_splices(gw), 5)  # every stream and its slot released
        assert gw.proxy.engine.tunnels is not None
        assert all(s.active == 0 for s in gw.proxy.engine.tunnels.sessions["hidden"].values())
    finally:
        await node.kill()


async def _no_splices(gw: Gateway) -> bool:
    return not gw.proxy.engine.splices


async def _not_held(gw: Gateway) -> bool:
    assert gw.proxy.engine.tunnels is not None
    return "hidden" not in gw.proxy.engine.tunnels.sessions


async def test_the_spare_backend_connection_is_short_lived_and_never_stale(
        tgw: tuple[Gateway, BackendServer]) -> None:
    """The node's spare connection to its backend (``--preconnect``): one the backend
    closed meanwhile is never handed to a client, and an unused one is closed in time."""
    gw, _ = tgw
    idle_limit = [0.2]  # the backend closes a connection silent this long
    open_now: set[asyncio.StreamWriter] = set()
    requests: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        open_now.add(w)
        try:
            async with asyncio.timeout(idle_limit[0]):
                head = await r.readuntil(b"\r\n\r\n")
            requests.append(head)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await w.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_now.discard(w)
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    node = Node(gw, f"127.0.0.1:{port}", "--preconnect", "1")
    await node.start()
    try:
        await until(_connected(gw, 1), 10)
        for _ in range(4):  # each spare was closed by the backend before the next client
            assert await status(gw) == (200, b"ok\n")
            await asyncio.sleep(0.5)
        assert len(requests) == 4
        idle_limit[0] = 30.0
        assert await status(gw) == (200, b"ok\n")

        async def spare() -> bool:
            return len(open_now) == 1
        await until(spare, 2, 0.01)  # made once the stream's backend answered

        async def none() -> bool:
            return not open_now
        took = await until(none, 3, 0.02)
        assert took < 1.5  # --preconnect 1: closed unused after a second
        assert len(requests) == 5  # it never carried a request
    finally:
        await node.kill()
        srv.close()


async def test_a_finished_stream_leaves_nothing_to_the_garbage_collector(
        tgw: tuple[Gateway, BackendServer]) -> None:
    """The gateway's side of a tunnel stream (splice, halves, the stream, the client's TLS
    socket) is freed by reference counting when it ends, as a direct connection's is
    (tests/integration/test_proxy_tls.py says why that matters)."""
    gw, backend = tgw
    node = Node(gw, backend.addr)
    await node.start()
    try:
        await until(lambda: _ok(gw), 10)
        with cycles_kept() as left:
            for i in range(10):
                assert await status(gw, path=f"/{i}") == (200, f"hidden-backend /{i}\n".encode())
            await until(lambda: _no_splices(gw), 5)
            assert left({"Splice", "Half", "Stream", "SocketTransport", "TlsSocket"}) == []
    finally:
        await node.kill()
