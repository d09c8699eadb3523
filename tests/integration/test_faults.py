"""Faults around the gateway: a slow CA. (Others live beside their service's tests:
CA unreachable and kill -9 mid-order in test_certd_*, backend down in test_proxy_tls, disk
full in test_api, port in use in test_cli / test_dnsd_serve / test_proxy_tls.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message

from tests.certd_harness import dns_target, verify_chain, wait_cert
from tests.pebble import pebble_factory, requires_pebble
from tests.support import ZONE, make_config, services

__all__ = ["pebble_factory"]
pytestmark = requires_pebble

DELAY = 0.3


@contextlib.asynccontextmanager
async def slow_relay(upstream_port: int, delay: float) -> AsyncIterator[int]:
    """A TCP relay that holds every chunk from the CA for ``delay`` seconds."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, slow: bool) -> None:
        try:
            while data := await r.read(65536):
                if slow:
                    await asyncio.sleep(delay)
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, uw, False), pipe(ur, cw, True))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_slow_ca_still_issues_and_dns_keeps_answering(tmp_path: Path,
                                                            pebble_factory) -> None:  # type: ignore[no-untyped-def]
    cfg0 = make_config(tmp_path)
    pb = pebble_factory(dns_target(cfg0))
    async with slow_relay(pb.port, DELAY) as port:
        cfg = make_config(tmp_path, dns={"listen": [str(cfg0.dns.listen[0])]}, acme={
            "directory": f"https://127.0.0.1:{port}/dir", "ca_bundle": str(pb.ca_bundle),
            "email": "ops@example.com", "propagation_timeout": 20})
        async with services(cfg, "dnsd", "certd") as gw:
            store = gw.store
            host, dport = dns_target(cfg)
            answered, worst = 0, 0.0
            order = asyncio.create_task(wait_cert(store, "zone", 90))
            while not order.done():  # every query is answered while the order crawls
                t = time.monotonic()
                r = await dns.asyncquery.udp(dns.message.make_query(ZONE, "SOA"), host,
                                             port=dport, timeout=2)
                worst = max(worst, time.monotonic() - t)
                assert r.answer
                answered += 1
                await asyncio.sleep(0.05)
            cert = await order
            verify_chain(pb, cert, tmp_path)
            assert answered > 10
            print(f"\nslow CA ({DELAY} s per chunk): {answered} DNS queries answered during"
                  f" the order, slowest {worst * 1000:.1f} ms")
