"""Three gateways (``webgateway run`` processes on 127.0.0.21-23) sharing one PostgreSQL.

A name added through the first gateway's API is answered by the third's DNS and served over
HTTPS by the second's proxy; every write reaches every gateway (the latency is measured and
printed); the SOA serial is the same everywhere. Then PostgreSQL stops: DNS and HTTPS keep
answering from memory, API writes get ``503 store_unavailable``; it comes back and every
gateway follows again without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trustme

from tests.gateway import CLI, write_config
from tests.integration.proxy_harness import BackendServer, run
from tests.postgres import Postgres, requires_postgres, start_postgres
from tests.procs import Proc, wait_dns, wait_tcp
from tests.support import ZONE, cert_row, free_port
from webgateway.keyseal import KeySeal, parse_key_file
from webgateway.pg_store import PgStore

ADDRS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
WRITES = 50


@dataclass
class Member:
    addr: str
    dns_port: int
    https_port: int
    api: str
    admin: str
    proc: Proc
    config: Path


@dataclass
class Fleet:
    members: list[Member]
    url: str
    ca_file: Path
    http: aiohttp.ClientSession
    backend: str = ""

    async def call(self, m: Member, method: str, path: str, token: str,
                   body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, m.api + path, json=body,
                                     headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()


async def ask(m: Member, qname: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(qname, rdtype)
    return await dns.asyncquery.udp(q, m.addr, port=m.dns_port, timeout=1.0)


async def answers(m: Member, label: str) -> bool:
    r = await ask(m, f"{label}.{ZONE}")
    return r.rcode() == dns.rcode.NOERROR and bool(r.answer)


async def soa_serial(m: Member) -> int:
    r = await ask(m, ZONE, "SOA")
    return int(r.answer[0][0].serial)


async def until(cond: Any, seconds: float = 10.0, step: float = 0.002) -> float:
    """Poll the async ``cond`` until true (bounded); the time it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if await cond():
            return time.monotonic() - t0
        await asyncio.sleep(step)
    raise AssertionError(f"not true after {seconds} s")


async def zone_certificate(url: str, shared: Path, seal: KeySeal) -> Path:
    """What certd would store: a wildcard certificate row, its key sealed with the fleet's
    key file (every gateway loads it from the store)."""
    ca = trustme.CA()
    store = PgStore(url, 0.05, 5.0)
    await store.open()
    try:
        await store.put_certificate(cert_row("zone", (ZONE, f"*.{ZONE}"),
                                             ca.issue_cert(ZONE, f"*.{ZONE}"), seal))
    finally:
        await store.close()
    ca_file = shared / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


def fleet_key(shared: Path) -> Path:
    """The ``[store] key_file`` every gateway of the fleet shares (0600)."""
    path = shared / "store.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def start_fleet(tmp_path: Path, pg: Postgres, acme: dict[str, Any] | None = None,
                      url: str = "", dns: dict[str, Any] | None = None,
                      nameservers: dict[str, list[str]] | None = None,
                      fleet: dict[str, Any] | None = None,
                      zone_keys: dict[str, Any] | None = None) -> AsyncIterator[Fleet]:
    """Three ``webgateway run`` on 127.0.0.21-23 on one database (fresh, or ``url``) sharing
    ``shared/store.key``; with ``acme`` each runs certd against that CA and no certificate
    is stored beforehand; ``dns`` and ``nameservers`` add to every gateway's sections,
    ``fleet`` is their ``[fleet]`` and ``zone_keys`` more ``[zone]`` keys."""
    url = url or pg.new_database()
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    key_file = shared / "store.key"
    if not key_file.exists():
        fleet_key(shared)
    zone = {
        "gateway_ipv4": ADDRS,
        "gateway_ipv6": [],
        "nameservers": {**{f"ns{i}.{ZONE}": [a] for i, a in enumerate(ADDRS, 1)},
                        **(nameservers or {})},
        **(zone_keys or {}),
    }
    members: list[Member] = []
    try:
        for i, addr in enumerate(ADDRS, 1):
            d = tmp_path / f"gw{i}"
            d.mkdir()
            dns_port, https_port, api_port = (free_port(host=addr) for _ in range(3))
            extra: dict[str, Any] = {"acme": acme} if acme else {}
            if fleet:
                extra["fleet"] = fleet
            cfg = write_config(
                d, zone=zone,
                dns={"listen": [f"{addr}:{dns_port}"], **(dns or {})},
                proxy={"https_listen": [f"{addr}:{https_port}"], "http_listen": []},
                api={"listen": f"{addr}:{api_port}"},
                store={"url": url, "poll_interval": 0.5, "timeout": 2.0,
                       "key_file": str(key_file)},
                **extra,
            )
            proc = Proc(f"gw{i}", [*CLI, "run", "--config", str(cfg)], d / "gw.log")
            members.append(Member(addr, dns_port, https_port, f"http://{addr}:{api_port}", "",
                                  proc, cfg))
        for i, m in enumerate(members, 1):
            wait_tcp(m.addr, int(m.api.rsplit(":", 1)[1]), m.proc, seconds=30)
            wait_dns(m.addr, m.dns_port, ZONE, m.proc)
            m.admin = (tmp_path / f"gw{i}" / "admin.token").read_text().strip()
        seal = KeySeal(parse_key_file(key_file.read_bytes()))
        ca_file = shared / "ca.pem" if acme else await zone_certificate(url, shared, seal)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            yield Fleet(members, url, ca_file, http)
    finally:
        for m in members:
            m.proc.stop()


@pytest.fixture
async def fleet(tmp_path: Path, postgres_server: Postgres) -> AsyncIterator[Fleet]:
    async with start_fleet(tmp_path, postgres_server) as f:
        yield f


async def served(fleet: Fleet, m: Member, label: str = "alice") -> bool:
    """HTTPS through ``m``'s proxy (terminated with the fleet's certificate) reaches the backend."""
    rc, out, _ = await run(
        "curl", "-sS", "--max-time", "5", "--cacert", str(fleet.ca_file),
        "--resolve", f"{label}.{ZONE}:{m.https_port}:{m.addr}",
        f"https://{label}.{ZONE}:{m.https_port}/hello")
    return rc == 0 and out == b"alice-backend /hello\n"


@contextlib.asynccontextmanager
async def alice(fleet: Fleet) -> AsyncIterator[str]:
    """Owner alice (created through gw1) with the name alice routed to a live backend."""
    gw1 = fleet.members[0]
    st, owner = await fleet.call(gw1, "POST", "/v1/owners", gw1.admin, {"name": "alice"})
    assert st == 201, owner
    token = str(owner["token"])
    backend = BackendServer("alice-backend", "127.0.0.1")
    await backend.start()
    try:
        st, body = await fleet.call(gw1, "PUT", "/v1/names/alice", token,
                                    {"backends": [backend.addr]})
        assert st == 201, body
        fleet.backend = backend.addr
        yield token
    finally:
        await backend.close()


async def test_a_name_written_anywhere_is_served_everywhere(
    fleet: Fleet, postgres_server: Postgres
) -> None:
    gw1, gw2, gw3 = fleet.members
    async with alice(fleet) as token:
        await until(lambda: answers(gw3, "alice"), 5)
        r = await ask(gw3, f"alice.{ZONE}")
        assert sorted(rd.address for rd in r.answer[0]) == ADDRS
        await until(lambda: served(fleet, gw2), 10, step=0.1)

        # write-to-every-gateway latency: from the API call on gw1 to an answer on all three
        took: list[float] = []
        acked: list[float] = []
        for i in range(WRITES):
            t0 = time.monotonic()
            st, body = await fleet.call(gw1, "PUT", f"/v1/names/n{i}", token,
                                        {"backends": [fleet.backend]})
            assert st == 201, body
            acked.append(time.monotonic() - t0)

            await until(lambda label=f"n{i}": all_answer(fleet, label), 5)  # type: ignore[misc]
            took.append(time.monotonic() - t0)
        q = statistics.quantiles(took, n=100, method="inclusive")
        print(f"\nfleet write-to-every-gateway latency over {WRITES} writes (3 gateways):"
              f" p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms,"
              f" max {max(took) * 1000:.1f} ms (the API's own answer: p50"
              f" {statistics.median(acked) * 1000:.1f} ms)")
        assert q[98] < 1.0

        db = fleet.url.rsplit("/", 1)[1]
        stored = int(postgres_server.sql("SELECT value FROM serial", db=db))
        assert [await soa_serial(m) for m in fleet.members] == [stored] * 3


@requires_postgres
async def test_postgres_down_the_fleet_keeps_serving_and_catches_up(tmp_path: Path) -> None:
    with start_postgres() as pg:  # its own server: this test stops it
        async with start_fleet(tmp_path, pg) as fleet, alice(fleet) as token:
            gw1, gw2, gw3 = fleet.members
            await until(lambda: answers(gw3, "alice"), 5)
            await until(lambda: served(fleet, gw2), 10, step=0.1)
            serial = await soa_serial(gw1)

            pg.stop()
            end = time.monotonic() + 3
            while time.monotonic() < end:  # DNS and HTTPS from memory, on every gateway
                assert all([await answers(m, "alice") for m in fleet.members])
                assert [await soa_serial(m) for m in fleet.members] == [serial] * 3
                await asyncio.sleep(0.1)
            assert all([await served(fleet, m) for m in fleet.members])
            t0 = time.monotonic()
            st, err = await fleet.call(gw1, "PUT", "/v1/names/bob", token,
                                       {"backends": [fleet.backend]})
            assert st == 503 and err["error"] == "store_unavailable", err
            st, err = await fleet.call(gw2, "GET", "/v1/names/alice", token)
            assert st == 503 and err["error"] == "store_unavailable", err
            async with fleet.http.get(gw3.api + "/healthz") as r:
                assert r.status == 503 and (await r.json())["error"] == "store_unavailable"
            assert time.monotonic() - t0 < 10  # bounded by [store] timeout, never a hang

            pg.start()
            # writes resume without a restart (the first call may still find the old socket)
            async def written() -> bool:
                st, _ = await fleet.call(gw3, "PUT", "/v1/names/bob", token,
                                         {"backends": [fleet.backend]})
                return st == 201
            await until(written, 15, step=0.2)
            await until(lambda: all_answer(fleet, "bob"), 15, step=0.05)
            serials = [await soa_serial(m) for m in fleet.members]
            assert serials == [serials[0]] * 3 and serials[0] > serial
            for m in fleet.members:
                assert m.proc.alive()
                log = m.proc.log.read_text()
                # each follower (dnsd, proxy) says when the outage starts and ends, once
                assert log.count("store read failed") <= 2, log
                assert "Traceback" not in log


async def all_answer(fleet: Fleet, label: str) -> bool:
    return all(await asyncio.gather(*(answers(m, label) for m in fleet.members)))
