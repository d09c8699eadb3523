"""One ACME order per certificate across a fleet: three ``webgateway run`` on one PostgreSQL,
a real Pebble. The gateway holding the zone certificate's lease is killed (kill -9) in the
middle of its order; another takes the lease over within 30 s and resumes the same order
(its URL and key are in the store), Pebble sees one order, and every gateway serves the
certificate it issued, loaded from the store. No key reaches a log.

Pebble asks a fourth member for the challenge TXT, a ``webgateway dnsd`` on the same
database (as a CA asks whichever name server it likes). It is also a name server every
gateway waits for before it answers a challenge (listed in ``[dns] secondaries``, so certd's
propagation check asks it), and it starts only after the kill: so the holder is caught
deterministically mid-order, its order created and its TXT published, however fast the
machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

from tests.gateway import CLI, write_config
from tests.integration.test_fleet import ADDRS, alice, served, start_fleet
from tests.pebble import pebble_factory, requires_pebble
from tests.postgres import Postgres
from tests.procs import Proc, wait_dns, wait_tcp
from tests.secondaries import TSIG
from tests.support import ZONE, free_port
from webgateway.keyseal import KeySeal, parse_key_file, slot

__all__ = ["pebble_factory"]
pytestmark = requires_pebble

DNS_MEMBER = "127.0.0.24"


def row(pg: Postgres, db: str, sql: str) -> list[str]:
    out = pg.sql(sql, db=db).strip()
    return out.split("|") if out else []


async def test_kill_9_of_the_order_holder_another_gateway_resumes_the_same_order(  # type: ignore[no-untyped-def]
        tmp_path: Path, postgres_server: Postgres, pebble_factory) -> None:
    pg = postgres_server
    url = pg.new_database()
    db = url.rsplit("/", 1)[1]
    shared = tmp_path / "shared"
    shared.mkdir()
    key_file = shared / "store.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    dns_port = free_port(host=DNS_MEMBER)
    d = tmp_path / "dns4"
    d.mkdir()
    ns4 = {f"ns4.{ZONE}": [DNS_MEMBER]}
    dns_cfg = write_config(
        d, zone={"gateway_ipv4": ADDRS, "gateway_ipv6": [],
                 "nameservers": {**{f"ns{i}.{ZONE}": [a] for i, a in enumerate(ADDRS, 1)},
                                 **ns4}},
        dns={"listen": [f"{DNS_MEMBER}:{dns_port}"]},
        store={"url": url, "poll_interval": 0.5, "timeout": 2.0, "key_file": str(key_file)})
    dnsd: Proc | None = None
    pb = pebble_factory((DNS_MEMBER, dns_port))
    (shared / "ca.pem").write_bytes(pb.root_pem())
    acme = {"directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
            "propagation_timeout": 90}
    try:
        async with start_fleet(tmp_path, pg, acme=acme, url=url, nameservers=ns4,
                               dns={"secondaries": [f"{DNS_MEMBER}:{dns_port}"],
                                    "tsig": TSIG}) as fleet:
            by_config = {str(tmp_path / f"gw{i}" / "webgateway.toml"): m
                         for i, m in enumerate(fleet.members, 1)}
            end = time.monotonic() + 30
            while not (row(pg, db, "SELECT 1 FROM txt") and (order := row(
                    pg, db, "SELECT order_url FROM certificates WHERE id='zone'"
                            " AND order_url != ''"))):
                assert time.monotonic() < end, [m.proc.tail() for m in fleet.members]
                await asyncio.sleep(0.05)
            order_url = order[0]
            (holder,) = row(pg, db, "SELECT holder FROM leases WHERE name='cert:zone'")
            victim = by_config[holder.split(":", 1)[1].rsplit("#", 1)[0]]
            end = time.monotonic() + 10  # mid-order: waiting for ns4 to serve the TXT
            while f"{DNS_MEMBER}:{dns_port} serve the challenge" not in victim.proc.log.read_text():
                assert time.monotonic() < end, victim.proc.tail()
                await asyncio.sleep(0.05)
            victim.proc.stop(signal.SIGKILL)
            killed = time.monotonic()
            dnsd = Proc("dns4", [*CLI, "dnsd", "--config", str(dns_cfg)], d / "dnsd.log")
            wait_dns(DNS_MEMBER, dns_port, ZONE, dnsd, seconds=20)

            while row(pg, db, "SELECT state FROM certificates WHERE id='zone'") != ["valid"]:
                assert time.monotonic() - killed < 30, [m.proc.tail() for m in fleet.members]
                await asyncio.sleep(0.1)
            took = time.monotonic() - killed
            print(f"\nthe order of the killed gateway was finished by another in {took:.1f} s")
            alive = [m for m in fleet.members if m is not victim]
            logs = {m.addr: m.proc.log.read_text() for m in alive}
            resumed = [a for a, text in logs.items() if f"resuming order {order_url}" in text]
            assert len(resumed) == 1, logs  # one gateway took it over, with the same order
            issued = re.findall(r"certificate zone for .* obtained", "".join(logs.values()))
            assert len(issued) == 1
            # Pebble saw one order for the zone's names; the fleet counted one in its budget
            pebble_log = pb.proc.log.read_text()
            assert len(re.findall(r'Added order "[^"]+" to the db', pebble_log)) == 1
            assert row(pg, db, "SELECT count(*) FROM acme_orders WHERE cert_id='zone'") == ["1"]

            # every gateway serves it, the killed one too once restarted (from the store)
            i = fleet.members.index(victim) + 1
            victim.proc = Proc(f"gw{i}b", [*CLI, "run", "--config",
                                           str(tmp_path / f"gw{i}" / "webgateway.toml")],
                               tmp_path / f"gw{i}" / "gw-restarted.log")
            wait_tcp(victim.addr, int(victim.api.rsplit(":", 1)[1]), victim.proc, seconds=30)
            async with alice(fleet):
                for m in fleet.members:
                    end = time.monotonic() + 20
                    while not await served(fleet, m):
                        assert time.monotonic() < end, m.proc.tail()
                        await asyncio.sleep(0.1)

            # keys: sealed in the store, in no log line of any member
            seal = KeySeal(parse_key_file(key_file.read_bytes()))
            (sealed,) = row(pg, db, "SELECT key FROM certificates WHERE id='zone'")
            assert sealed.startswith("aesgcm1:")
            (account,) = row(pg, db, "SELECT value FROM secrets WHERE name='acme-account'")
            secrets = [sealed, account]
            for stored, where in ((sealed, slot("cert", "zone")), (account, "acme-account")):
                pem = seal.open(where, stored)
                secrets += [ln.decode() for ln in pem.splitlines() if b"-----" not in ln]
            every_log = [p.read_text() for p in tmp_path.glob("gw*/*.log")]
            every_log.append(dnsd.log.read_text())
            assert all(s not in text for s in secrets for text in every_log)
            assert all("PRIVATE KEY" not in text for text in every_log)
    finally:
        if dnsd is not None:
            dnsd.stop()
