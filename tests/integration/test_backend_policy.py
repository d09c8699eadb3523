"""Backend policy and per-name limits, live: the API refuses, the proxy refuses again.

The API over real HTTP refuses a loopback backend spelled as IPv4-mapped IPv6 and a
backend that is the proxy's own listener. The proxy, given rows written straight into
the store (as an older version or a looser config could have left them), never dials
them: a real listener at that address sees no connection. One name cannot hold more
than ``max_connections_per_name`` spliced pairs, and descriptors come back after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from prometheus_client import CollectorRegistry

from tests.integration.proxy_harness import (
    Backend,
    BackendServer,
    Gateway,
    TlsMode,
    curl,
    fqdn,
    gateway,
)
from tests.support import ZONE, make_config
from webgateway.apiservice import ApiService
from webgateway.backend_policy import BackendPolicy
from webgateway.config import Config
from webgateway.sqlite_store import SqliteStore

# ------------------------------------------------------------------------------- API


@contextlib.asynccontextmanager
async def _api(cfg: Config) -> AsyncIterator[Callable[[str, list[str]], Awaitable[Any]]]:
    store = SqliteStore(cfg.store.path)
    await store.open()
    svc = ApiService(cfg, store, CollectorRegistry())
    await svc.start()
    url = f"http://127.0.0.1:{cfg.api.listen.port}"
    admin = {"Authorization": f"Bearer {cfg.api.admin_token_file.read_text().strip()}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/owners", json={"name": "o"}, headers=admin) as r:
                owner = {"Authorization": f"Bearer {(await r.json())['token']}"}

            async def put(label: str, backends: list[str]) -> Any:
                body = {"backends": backends, "tls": "passthrough"}
                async with http.put(f"{url}/v1/names/{label}", json=body, headers=owner) as r:
                    return r.status, await r.json()

            yield put
    finally:
        await svc.stop()
        await store.close()


async def test_api_refuses_mapped_loopback_and_metadata(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, api={"allow_loopback_backends": False})
    async with _api(cfg) as put:
        st, err = await put("m", ["[::ffff:127.0.0.1]:29999"])
        assert st == 422 and err["error"] == "invalid_backends"
        assert "reaches 127.0.0.1 (IPv4-mapped)" in err["detail"]
        assert "loopback" in err["detail"]
        st, err = await put("m", ["[64:ff9b::169.254.169.254]:80"])
        assert st == 422 and "metadata" in err["detail"] and "NAT64" in err["detail"]
        st, _ = await put("m", ["[fd00::5]:443"])
        assert st == 201


async def test_api_refuses_a_backend_that_is_our_own_listener(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)  # loopback backends allowed, as in every test
    assert cfg.api.allow_loopback_backends
    async with _api(cfg) as put:
        https = cfg.proxy.https_listen[0]
        for backend, key in ((str(https), "proxy.https_listen"),
                             (f"[::ffff:{https.host}]:{https.port}", "proxy.https_listen"),
                             (str(cfg.api.listen), "api.listen"),
                             (str(cfg.dns.listen[0]), "dns.listen")):
            st, err = await put("loop", [backend])
            assert st == 422, backend
            assert "own listener" in err["detail"] and key in err["detail"], err
        st, _ = await put("loop", [f"127.0.0.1:{https.port + 1 if https.port < 65535 else 1}"])
        assert st == 201  # another loopback port stays allowed under the flag


async def test_api_backend_networks_narrow_backends(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, api={"backend_networks": ["fd00::/8"]})
    async with _api(cfg) as put:
        st, err = await put("n", ["10.1.2.3:80"])
        assert st == 422 and "backend_networks" in err["detail"] and "fd00::/8" in err["detail"]
        assert (await put("n", ["[fd00::5]:80"]))[0] == 201


# ----------------------------------------------------------------------------- proxy

Body = Callable[[Gateway], Awaitable[None]]


def _live(tmp: Path, body: Body, **cfg: Any) -> None:
    async def main() -> None:
        async with gateway(tmp, **cfg) as gw:
            await body(gw)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _sample(gw: Gateway, name: str, **labels: str) -> float:
    return gw.registry.get_sample_value(name, labels) or 0.0


def _connections(gw: Gateway) -> float:
    """HTTPS connections that ended, whatever their outcome."""
    return sum(s.value for m in gw.registry.collect()
               if m.name == "webgateway_proxy_connections" for s in m.samples
               if s.name.endswith("_total"))


def test_proxy_never_dials_a_forbidden_backend_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(gw: Gateway) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        target = BackendServer("target", "127.0.0.1", raw=True)
        await target.start()
        try:
            mapped = f"[::ffff:127.0.0.1]:{target.port}"
            await gw.name("m", mapped, tls=TlsMode.PASSTHROUGH)  # straight into the store
            await gw.name("t", mapped)
            for _ in range(2):
                rc, out, _ = await curl(gw, fqdn("m"), "/")
                assert rc != 0 and out == b""  # passthrough: a clean close
                rc, out, err = await curl(gw, fqdn("t"), "/", "-w", "%{http_code}")
                assert rc == 0 and out.endswith(b"502") and b"Bad Gateway" in out, err
            await asyncio.sleep(0.2)
            assert target.connections == 0
            assert _sample(gw, "webgateway_proxy_backend_failures_total", reason="policy") == 4
            # the listener was reachable at that spelling: the proxy chose not to go
            _, w = await asyncio.open_connection("::ffff:127.0.0.1", target.port)
            for _ in range(100):
                if target.connections:
                    break
                await asyncio.sleep(0.02)
            assert target.connections == 1
            w.close()
        finally:
            await target.close()

    with caplog.at_level(logging.WARNING, logger="proxy.engine"):
        _live(tmp_path, body, api={"allow_loopback_backends": False})
    said = [r.getMessage() for r in caplog.records if "policy refuses" in r.getMessage()]
    assert len(said) == 2, said  # once per name, not once per connection
    assert all("loopback" in s and "IPv4-mapped" in s for s in said)


def test_proxy_refuses_a_name_looping_back_at_its_own_listener(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("loop", f"127.0.0.1:{gw.https_port}", tls=TlsMode.PASSTHROUGH)
        rc, out, _ = await curl(gw, fqdn("loop"), "/")
        assert rc != 0 and out == b""
        for _ in range(100):
            if gw.proxy.engine.count == 0:
                break
            await asyncio.sleep(0.02)
        assert gw.proxy.engine.count == 0
        # one client connection, no second one made by the proxy to itself
        assert _connections(gw) == 1
        assert _sample(gw, "webgateway_proxy_connections_total",
                       outcome="backend_refused") == 1

    _live(tmp_path, body)  # even with loopback backends allowed


def test_the_per_name_cap_alone_bounds_a_loop(tmp_path: Path) -> None:
    # Defence in depth: were the policy bypassed, a loop stops at the name's cap (it
    # once opened ~10,000 connections for one curl).
    async def body(gw: Gateway) -> None:
        gw.proxy.engine.policy = BackendPolicy(allow_loopback=True)  # knows no listener
        await gw.name("loop", f"127.0.0.1:{gw.https_port}", tls=TlsMode.PASSTHROUGH)
        rc, out, _ = await curl(gw, fqdn("loop"), "/", "--max-time", "10")
        assert rc != 0 and out == b""
        for _ in range(200):
            if gw.proxy.engine.count == 0:
                break
            await asyncio.sleep(0.02)
        assert gw.proxy.engine.count == 0 and gw.proxy.engine.per_name == {}
        assert _connections(gw) == 51  # counted as they end
        assert _sample(gw, "webgateway_proxy_connections_total", outcome="over_cap") == 1

    _live(tmp_path, body, max_connections_per_name=50)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settle(gw: Gateway, baseline: int) -> None:
    for _ in range(200):
        if gw.proxy.engine.count == 0 and _fds() <= baseline:
            return
        await asyncio.sleep(0.02)


def test_connections_per_name_are_capped(tmp_path: Path) -> None:
    async def body(gw: Gateway) -> None:
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        plain = BackendServer("plain", "127.0.0.1")
        await plain.start()
        leaf = gw.ca.issue_cert(fqdn("pt"))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(server_ctx)
        tls_backend = BackendServer("tlsbe", "127.0.0.1")
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Backend(tls_backend), "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        await gw.name("few", plain.addr)
        await gw.name("pt", f"127.0.0.1:{port}", tls=TlsMode.PASSTHROUGH)
        client_ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        baseline = _fds()

        async def connect(host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", gw.https_port, ssl=client_ctx, server_hostname=host), 10)

        async def get(r: asyncio.StreamReader, w: asyncio.StreamWriter, host: str) -> bytes:
            w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            return await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)

        try:
            held = []
            for host in (fqdn("few"), fqdn("few"), fqdn("pt"), fqdn("pt")):
                r, w = await connect(host)
                assert b"200 OK" in await get(r, w, host)
                held.append(w)
            assert gw.proxy.engine.per_name == {"few": 2, "pt": 2}
            # terminate: the third gets a 503 page, its name's backend is not dialled
            r, w = await connect(fqdn("few"))
            head = await get(r, w, fqdn("few"))
            assert head.startswith(b"HTTP/1.1 503 Service Unavailable"), head
            assert await asyncio.wait_for(r.read(), 10)  # the page, then EOF
            w.close()
            assert plain.connections == 2
            # passthrough: the third is closed before its backend is dialled
            with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
                await connect(fqdn("pt"))
            assert tls_backend.connections == 2
            assert _sample(gw, "webgateway_proxy_connections_total", outcome="over_cap") == 2
            # another name is not affected by the full ones
            await gw.name("other", plain.addr)
            r, w = await connect(fqdn("other"))
            assert b"200 OK" in await get(r, w, fqdn("other"))
            w.close()
            for w in held:
                w.close()
            await _settle(gw, baseline)
            assert gw.proxy.engine.count == 0 and gw.proxy.engine.per_name == {}
            assert _fds() <= baseline
            # and the freed slots serve again
            r, w = await connect(fqdn("few"))
            assert b"200 OK" in await get(r, w, fqdn("few"))
            w.close()
        finally:
            server.close()
            await plain.close()

    _live(tmp_path, body, max_connections_per_name=2)
