"""The live proxy against real clients (curl, openssl s_client) on loopback.

Each test runs its own event loop (uvloop, what production runs; the first one also on
the stdlib loop) with a real store, a real proxy service, tiny asyncio backends on
127.0.0.1 and ::1, and trustme certificates inserted through ``store.put_certificate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy import clienthello as ch
from proxy.splice import HIGH_WATER
from tests.integration.proxy_harness import (
    BackendServer,
    Gateway,
    TlsMode,
    client_unread,
    curl,
    cycles_kept,
    fqdn,
    gateway,
    receive,
    run,
    upload,
)
from tests.integration.test_tunnel import _client_hello
from tests.support import ZONE
from webgateway.addresses import parse_hostport

Body = Callable[[Gateway, BackendServer, BackendServer], Awaitable[None]]


def _run(kind: str, coro: Coroutine[Any, Any, None]) -> None:
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def live(tmp: Path, body: Body, kind: str = "uvloop", **proxy_cfg: Any) -> None:
    async def main() -> None:
        v4 = BackendServer("v4", "127.0.0.1")
        v6 = BackendServer("v6", "::1")
        await v4.start()
        await v6.start()
        try:
            async with gateway(tmp, **proxy_cfg) as gw:
                await body(gw, v4, v6)
        finally:
            await v4.close()
            await v6.close()

    _run(kind, main())


async def tls_client(gw: Gateway, server_name: str | None, alpn: list[str] | None = None,
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", gw.https_port, ssl=ctx, server_hostname=server_name), 10)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
              path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return await asyncio.wait_for(reader.readexactly(length), 10)


def peer_sans(writer: asyncio.StreamWriter) -> list[str]:
    cert = writer.get_extra_info("peercert")
    return sorted(v for k, v in cert["subjectAltName"] if k == "DNS")


# ---------------------------------------------------------------------- routing


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_terminate_wildcard_to_v4_and_v6_backends(tmp_path: Path, kind: str) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("alice", v4.addr)
        await gw.name("bob", v6.addr)
        rc, out, err = await curl(gw, fqdn("alice"), "/hello")
        assert (rc, out) == (0, b"v4 /hello\n"), err
        rc, out, err = await curl(gw, fqdn("bob"), "/x?y=1")
        assert (rc, out) == (0, b"v6 /x?y=1\n"), err
        # keep-alive: several requests on one TLS connection
        second = f"https://{fqdn('alice')}:{gw.https_port}/a"
        rc, out, err = await curl(gw, fqdn("alice"), "/b", second, "-w", "%{num_connects}")
        assert (rc, out) == (0, b"v4 /a\n1v4 /b\n0"), err

    live(tmp_path, body, kind)


def test_exact_san_beats_wildcard_and_custom_domains_route(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.certificate("exact", fqdn("alice"))
        await gw.name("alice", v4.addr)
        await gw.name("bob", v6.addr)
        await gw.certificate("shop.example.org", "shop.example.org")
        from tests.support import held_domain

        await held_domain(gw.store, "shop.example.org", "bob", 1)
        await gw.synced()
        _r, w = await tls_client(gw, fqdn("alice"))
        assert peer_sans(w) == [fqdn("alice")]
        w.close()
        _r, w = await tls_client(gw, fqdn("bob"))
        assert peer_sans(w) == sorted([ZONE, f"*.{ZONE}"])
        w.close()
        rc, out, err = await curl(gw, "shop.example.org", "/cart")
        assert (rc, out) == (0, b"v6 /cart\n"), err
        # openssl s_client, the other real client, on the custom domain
        rc, out, err = await run(
            "openssl", "s_client", "-connect", f"127.0.0.1:{gw.https_port}",
            "-servername", "shop.example.org", "-CAfile", str(gw.ca_file),
            "-verify_return_error", "-ign_eof",
            stdin=b"GET /os HTTP/1.1\r\nHost: shop.example.org\r\nConnection: close\r\n\r\n")
        assert rc == 0, err
        assert b"Verify return code: 0 (ok)" in out
        assert b"v6 /os" in out

    live(tmp_path, body)


def test_alpn_offers_h2_only_for_http2_names(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("plain", v4.addr)
        await gw.name("fast", v4.addr, http2=True)
        for label, want in (("plain", "http/1.1"), ("fast", "h2")):
            _, w = await tls_client(gw, fqdn(label), ["h2", "http/1.1"])
            assert w.get_extra_info("ssl_object").selected_alpn_protocol() == want
            w.close()

    live(tmp_path, body)


# ---------------------------------------------------------------------- clean refusals


async def s_client_alert(gw: Gateway, *args: str) -> bytes:
    rc, _out, err = await run("openssl", "s_client", "-connect", f"127.0.0.1:{gw.https_port}",
                             *args, stdin=b"")
    assert rc != 0
    return err


def test_unknown_sni_no_sni_and_missing_cert_get_unrecognized_name(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.name("nocert", v4.addr)
        err = await s_client_alert(gw, "-servername", fqdn("nocert"))
        assert b"unrecognized name" in err, err
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        err = await s_client_alert(gw, "-servername", fqdn("nobody"))
        assert b"unrecognized name" in err, err
        err = await s_client_alert(gw, "-noservername")
        assert b"unrecognized name" in err, err
        # garbage: closed, not hung
        r, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        # and the proxy still serves
        rc, out, err = await curl(gw, fqdn("nocert"), "/ok")
        assert (rc, out) == (0, b"v4 /ok\n"), err

    live(tmp_path, body)


# ---------------------------------------------------------------------- backends


def test_refused_backend_is_skipped_and_least_connections_spreads(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        await gw.name("multi", dead, v4.addr, v6.addr)
        conns = [await tls_client(gw, fqdn("multi")) for _ in range(6)]
        tags = [(await get(r, w, fqdn("multi"), "/")).split()[0] for r, w in conns]
        assert sorted(tags) == [b"v4"] * 3 + [b"v6"] * 3
        for _, w in conns:
            w.close()

    live(tmp_path, body)


def test_no_backend_gives_502_for_terminate_and_close_for_passthrough(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        await gw.name("down", dead)
        rc, out, err = await curl(gw, fqdn("down"), "/", "-w", "%{http_code}")
        assert rc == 0, err
        assert out.endswith(b"502") and b"Bad Gateway" in out
        await gw.name("downpt", dead, tls=TlsMode.PASSTHROUGH)
        rc, out, err = await curl(gw, fqdn("downpt"), "/")
        assert rc != 0 and out == b""

    live(tmp_path, body)


def test_passthrough_forwards_the_raw_hello(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        leaf = gw.ca.issue_cert(fqdn("pt"))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(ctx)
        tls_backend = BackendServer("tlsbe", "::1")
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            from tests.integration.proxy_harness import Backend

            return Backend(tls_backend)

        server = await loop.create_server(factory, "::1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            await gw.name("pt", f"[::1]:{port}", tls=TlsMode.PASSTHROUGH)
            rc, out, err = await curl(gw, fqdn("pt"), "/through")
            assert (rc, out) == (0, b"tlsbe /through\n"), err
        finally:
            server.close()
        # the backend saw the client's own ClientHello, SNI and all
        # (recorded by a raw listener on the same route)
        raw = BackendServer("raw", "127.0.0.1", raw=True)
        await raw.start()
        await gw.name("pt", raw.addr, tls=TlsMode.PASSTHROUGH)
        await run("openssl", "s_client", "-connect", f"127.0.0.1:{gw.https_port}",
                  "-servername", fqdn("pt"), stdin=b"", timeout=5)
        hello = ch.parse(raw.firsts[0])
        assert isinstance(hello, ch.ClientHello) and hello.server_name == fqdn("pt")
        await raw.close()

    live(tmp_path, body, handshake_timeout=2.0, connect_timeout=2.0, idle_timeout=2.0)


def test_proxy_protocol_v2_carries_the_client_address(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("pp", v6.addr, proxy_protocol=True)
        r, w = await tls_client(gw, fqdn("pp"))
        assert await get(r, w, fqdn("pp"), "/p") == b"v6 /p\n"
        client_port = w.get_extra_info("sockname")[1]
        w.close()
        first = v6.firsts[-1]
        assert first[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
        assert first[12:14] == b"\x21\x11"  # PROXY, TCP over IPv4 (the client side)
        assert first[16:20] == socket.inet_aton("127.0.0.1")
        assert int.from_bytes(first[24:26], "big") == client_port
        assert int.from_bytes(first[26:28], "big") == gw.https_port

    live(tmp_path, body)


# ---------------------------------------------------------------------- changes live


def test_certificate_and_route_changes_keep_open_connections(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("live", v4.addr)
        r1, w1 = await tls_client(gw, fqdn("live"))
        serial1 = w1.get_extra_info("peercert")["serialNumber"]
        assert await get(r1, w1, fqdn("live"), "/1") == b"v4 /1\n"
        await gw.certificate("zone", ZONE, f"*.{ZONE}")  # renewal: a new chain
        await gw.name("live", v6.addr)  # route change
        r2, w2 = await tls_client(gw, fqdn("live"))
        assert w2.get_extra_info("peercert")["serialNumber"] != serial1
        assert await get(r2, w2, fqdn("live"), "/2") == b"v6 /2\n"
        # the first connection was not dropped and still reaches its backend
        assert await get(r1, w1, fqdn("live"), "/3") == b"v4 /3\n"
        w1.close()
        w2.close()

    live(tmp_path, body)


# ---------------------------------------------------------------------- :80


def test_http_listener_redirects_known_names_only(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.name("web", v4.addr)
        from tests.support import held_domain

        await held_domain(gw.store, "www.shop.example", "web", 1)
        # a pending claim (no proof seen yet) is not routed: the proxy knows only holders
        from webgateway.model import Domain

        await gw.store.put_domain(Domain("pending.shop.example", "web", 1, "cpending"), 100)
        await gw.synced()
        for host, code, loc in (
            (fqdn("web"), b"301", f"https://{fqdn('web')}/a/b?c=d".encode()),
            ("www.shop.example", b"301", b"https://www.shop.example/a/b?c=d"),
            (fqdn("nobody"), b"404", b""),
            ("pending.shop.example", b"404", b""),
        ):
            rc, out, err = await run(
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                "--resolve", f"{host}:{gw.http_port}:127.0.0.1",
                f"http://{host}:{gw.http_port}/a/b?c=d")
            assert rc == 0, err
            assert out.strip() == (code + b" " + loc).strip()

    live(tmp_path, body)


# ---------------------------------------------------------------------- limits


def test_slowloris_does_not_stop_new_clients_and_times_out(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("busy", v4.addr)
        slow = []
        for i in range(300):
            r, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
            w.write(b"\x16\x03\x01\x02" if i % 2 else b"")  # half a record header, or nothing
            slow.append((r, w))
        for i in range(3):
            rc, out, err = await curl(gw, fqdn("busy"), f"/{i}")
            assert (rc, out) == (0, f"v4 /{i}\n".encode()), err
        # handshake_timeout closes every one of them (bounded wait, not a timing assertion)
        for r, _ in slow:
            assert await asyncio.wait_for(r.read(), 30) == b""
        for _, w in slow:
            w.close()

    live(tmp_path, body, handshake_timeout=2.0)


def test_a_burst_of_clients_is_accepted_one_per_wakeup_and_all_served(tmp_path: Path) -> None:
    """The listener takes one connection per readiness: a full backlog still drains."""
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("burst", v4.addr)

        async def one(i: int) -> bytes:
            r, w = await tls_client(gw, fqdn("burst"))
            try:
                return await get(r, w, fqdn("burst"), f"/{i}")
            finally:
                w.close()

        got = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(150))), 60)
        assert got == [f"v4 /{i}\n".encode() for i in range(150)]

    live(tmp_path, body)


def test_idle_timeout_and_max_connections(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("few", v4.addr)
        held = [await tls_client(gw, fqdn("few")) for _ in range(4)]
        for r, w in held:
            assert await get(r, w, fqdn("few"), "/") == b"v4 /\n"
        # the fifth is turned away while four are open
        r5, w5 = await asyncio.open_connection("127.0.0.1", gw.https_port)
        w5.write(b"\x16")
        assert await asyncio.wait_for(r5.read(), 10) == b""
        w5.close()
        # idle connections are closed by the proxy ...
        for r, _ in held:
            assert await asyncio.wait_for(r.read(), 30) == b""
        for _, w in held:
            w.close()
        # ... which frees their slots
        for _ in range(100):
            if gw.proxy.engine.count == 0:
                break
            await asyncio.sleep(0.05)
        assert gw.proxy.engine.count == 0
        rc, out, err = await curl(gw, fqdn("few"), "/again")
        assert (rc, out) == (0, b"v4 /again\n"), err

    live(tmp_path, body, max_connections=4, idle_timeout=1.0)


def test_tls_client_eof_before_the_backend_is_linked_logs_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # openssl s_client sends its request and closes at once, often before the backend is
    # connected: the TLS side's EOF must not claim to keep the (TLS) transport open.
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("quiet", v4.addr)
        request = f"GET / HTTP/1.1\r\nHost: {fqdn('quiet')}\r\n\r\n".encode()
        for _ in range(5):
            rc, _, err = await run("openssl", "s_client", "-connect",
                                   f"127.0.0.1:{gw.https_port}", "-servername", fqdn("quiet"),
                                   stdin=request, timeout=10)
            assert rc == 0, err
        rc, out, err = await curl(gw, fqdn("quiet"), "/after")
        assert (rc, out) == (0, b"v4 /after\n"), err

    with caplog.at_level(logging.WARNING):
        live(tmp_path, body)
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


def test_slow_client_back_pressure_bounds_proxy_buffers(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("bulk", v4.addr)
        size = 64 * 1024 * 1024
        r, w = await tls_client(gw, fqdn("bulk"))
        w.transport.set_write_buffer_limits(0)
        w.write(f"GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        w.transport.pause_reading()  # a client that does not read
        await asyncio.sleep(1.0)
        sp = next(iter(gw.proxy.engine.splices))
        assert sp.linked and sp.held() <= 4 * HIGH_WATER
        from_backend = sp.carried()[1]
        await asyncio.sleep(0.5)  # the backend is not read while the client does not read
        assert sp.carried()[1] == from_backend < size
        w.transport.resume_reading()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert b"200 OK" in head
        got = 0
        while got < size:
            chunk = await asyncio.wait_for(r.read(1 << 20), 20)
            assert chunk
            got += len(chunk)
        assert got == size
        w.close()

    live(tmp_path, body)


def test_slow_backend_back_pressure_stops_reading_the_client_and_loses_nothing(
        tmp_path: Path) -> None:
    """The upload direction: a backend that does not read stops the proxy reading the
    client (it holds one chunk, not the upload); once it reads, every byte arrives."""
    size = 32 * 1024 * 1024

    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            await gw.certificate("zone", ZONE, f"*.{ZONE}")
            await gw.name("up", f"127.0.0.1:{listener.getsockname()[1]}")
            r, w = await tls_client(gw, fqdn("up"))
            sending = asyncio.ensure_future(upload(w, size))
            backend, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
            with backend:
                held = await client_unread(gw.proxy.engine, 1.0, size)  # backend: no reads
                assert held <= 4 * HIGH_WATER and not sending.done()
                got = await receive(backend, size)
                assert got == (size, await asyncio.wait_for(sending, 30))
                await loop.sock_sendall(backend, b"stored")
            assert await asyncio.wait_for(r.read(), 30) == b"stored"
            w.close()

    live(tmp_path, body)


def test_a_stalled_handshake_and_a_silent_backend_each_time_out(tmp_path: Path) -> None:
    """A client that sends its ClientHello and nothing more is closed at the handshake
    timeout; a backend that never answers the SYN (its accept queue is full) is given up
    at the connect timeout, and the next backend serves the client."""

    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        loop = asyncio.get_running_loop()
        engine = gw.proxy.engine
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        with socket.socket() as full, contextlib.ExitStack() as queued:
            full.bind(("127.0.0.1", 0))
            full.listen(0)  # one connection queued (backlog + 1), then SYNs are dropped
            for _ in range(3):
                c = queued.enter_context(socket.socket())
                c.setblocking(False)
                c.connect_ex(full.getsockname())
            await asyncio.sleep(0.2)
            await gw.name("slow", f"127.0.0.1:{full.getsockname()[1]}", v4.addr)
            started = loop.time()
            rc, out, err = await curl(gw, fqdn("slow"), "/", "-w", " %{http_code}")
            waited = loop.time() - started
        assert (rc, out) == (0, b"v4 /\n 200"), err
        assert 1.0 <= waited < 5.0  # the connect timeout (1 s), then the other backend
        assert engine.balancer.active(parse_hostport(v4.addr)) == 0

        r, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
        started = loop.time()
        w.write(_client_hello(fqdn("slow")))
        assert await asyncio.wait_for(r.read(), 10) != b""  # the server's flight, then EOF
        assert 1.0 <= loop.time() - started < 5.0
        assert engine.metrics.outcomes.get("handshake_failed") == 1
        w.close()

    live(tmp_path, body, handshake_timeout=1.0, connect_timeout=1.0)


def test_port_in_use_is_a_config_error_and_stop_closes_pending_sockets(tmp_path: Path) -> None:
    from tests.integration.proxy_harness import refused_at_start
    from tests.support import make_config

    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            cfg = make_config(tmp_path, proxy={"https_listen": [f"127.0.0.1:{port}"]})
            assert (await refused_at_start(cfg)).key == "proxy.https_listen"
        async with gateway(tmp_path / "g") as gw:
            r, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
            w.write(b"\x16\x03")  # a hello that never completes
            for _ in range(100):
                if gw.proxy.engine.loose:
                    break
                await asyncio.sleep(0.02)
            assert gw.proxy.engine.loose
            await gw.proxy.stop()
            assert not gw.proxy.engine.loose
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()

    _run("uvloop", main())


async def bio_handshake(gw: Gateway, host: str, split_at: int | None) -> bytes:
    """A TLS client driven by hand so the ClientHello can be sent in two TCP segments."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_file))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname=host)
    r, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
    try:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = out.read()
        if split_at is not None:
            w.write(hello[:split_at])
            await w.drain()
            await asyncio.sleep(0.3)
            hello = hello[split_at:]
        w.write(hello)
        for _ in range(20):
            data = await asyncio.wait_for(r.read(65536), 10)
            assert data, "closed during the handshake"
            inc.write(data)
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                w.write(out.read())
        w.write(out.read())
        tls.write(f"GET /split HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        w.write(out.read())
        body = b""
        for _ in range(50):
            data = await asyncio.wait_for(r.read(65536), 10)
            if not data:
                break
            inc.write(data)
            try:
                while chunk := tls.read(65536):
                    body += chunk
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            if b"/split" in body:
                break
        return body
    finally:
        w.close()


def test_clienthello_split_over_segments(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("split", v4.addr)
        for split in (None, 3, 5, 60):  # inside the record header, at its end, in the body
            got = await bio_handshake(gw, fqdn("split"), split)
            assert got.endswith(b"v4 /split\n"), (split, got)

    live(tmp_path, body)


def test_one_session_ticket_per_full_handshake_and_it_resumes(tmp_path: Path) -> None:
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("tix", v4.addr)
        await gw.synced()
        sess = tmp_path / "tls.session"
        request = f"GET /t HTTP/1.1\r\nHost: {fqdn('tix')}\r\nConnection: close\r\n\r\n".encode()
        common = ("openssl", "s_client", "-connect", f"127.0.0.1:{gw.https_port}",
                  "-servername", fqdn("tix"), "-tls1_3", "-msg", "-ign_eof")
        rc, out, err = await run(*common, "-sess_out", str(sess), stdin=request, timeout=10)
        assert rc == 0, err
        assert out.count(b"NewSessionTicket") == 1, out.decode(errors="replace")
        assert b"v4 /t" in out
        rc, out, err = await run(*common, "-sess_in", str(sess), stdin=request, timeout=10)
        assert rc == 0, err
        assert b"Reused, TLSv1.3" in out and b"v4 /t" in out

    live(tmp_path, body)


# ---------------------------------------------------------------------- memory
PER_CONNECTION = {"Splice", "Half", "SocketTransport", "TlsSocket", "Connect", "Dial"}


def test_a_finished_connection_leaves_nothing_to_the_garbage_collector(tmp_path: Path) -> None:
    """Reference counting frees every object of a connection once it ends: a cycle among
    them (pair <-> halves, transport <-> protocol, a transport's own bound method) would
    leave each connection to the collector, whose passes then run every few connections
    and, once survivors pile up, scan the whole heap. Served, closed early by the client,
    and passed through: none may leave one behind."""
    async def body(gw: Gateway, v4: BackendServer, v6: BackendServer) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("alice", v4.addr)
        await gw.name("pt", v6.addr, tls=TlsMode.PASSTHROUGH)
        with cycles_kept() as left:
            for i in range(20):
                reader, writer = await tls_client(gw, fqdn("alice"))
                if i % 2:
                    assert await get(reader, writer, fqdn("alice"), "/x") == b"v4 /x\n"
                writer.close()  # every second one before any response
                await writer.wait_closed()
            hello = _client_hello(fqdn("pt"))
            for _ in range(5):  # passed through to a plain backend: the hello is all it gets
                _, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
                w.write(hello)
                await asyncio.sleep(0.05)
                w.close()
                await w.wait_closed()
            engine = gw.proxy.engine
            for _ in range(500):
                if not engine.splices and not engine.count:
                    break
                await asyncio.sleep(0.01)
            assert not engine.splices and not engine.count
            assert left(PER_CONNECTION) == []

    live(tmp_path, body)

