"""A secondary listed in ``[zone] nameservers`` holds up DNS-01 until it serves the TXT.

dnsd on 127.0.0.30 is primary to a real Knot secondary on 127.0.0.31 (TSIG, NOTIFY, IXFR),
each on a free high port; the secondary is ``ns2`` of the zone and in ``[dns] secondaries``
(which gives certd and ``webgateway check`` its port). A real Pebble validates through dnsd.
Knot is stopped by its PID before certd starts, so the zone certificate must wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from tests.certd_harness import wait_cert
from tests.knot import knot_missing
from tests.pebble import PebbleFactory, pebble_factory, requires_pebble
from tests.procs import Proc
from tests.secondaries import KNOT, PRIMARY, TSIG, knot_conf, wait_for_zone
from tests.support import ZONE, free_port, make_config, services
from webgateway.delegation import nameserver_serials
from webgateway.model import CertState
from webgateway.supervisor import factory

__all__ = ["pebble_factory"]
pytestmark = [requires_pebble,
              pytest.mark.skipif(knot_missing(), reason="needs knotd (apt: knot)")]

DOWN_SECONDS = 4.0


async def txt(host: str, port: int, fqdn: str) -> set[str]:
    r = await dns.asyncquery.udp(dns.message.make_query(fqdn, "TXT"), host, port=port, timeout=2)
    return {rd.to_text() for rrset in r.answer if rrset.rdtype == 16 for rd in rrset}


async def test_zone_certificate_waits_for_a_listed_secondary(
        tmp_path: Path, pebble_factory: PebbleFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="certd.dnscheck")
    port, kport = free_port(host=PRIMARY), free_port(host=KNOT)
    pb = pebble_factory((PRIMARY, port))
    cfg = make_config(
        tmp_path,
        zone={"nameservers": {f"ns1.{ZONE}": [PRIMARY], f"ns2.{ZONE}": [KNOT]}},
        dns={"listen": [f"{PRIMARY}:{port}"], "secondaries": [f"{KNOT}:{kport}"], "tsig": TSIG},
        acme={"directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
              "email": "ops@example.com", "propagation_timeout": 60})
    kdir = tmp_path / "knot"
    kdir.mkdir()
    conf = ["knotd", "-c", str(knot_conf(kdir, kport, port))]
    challenge = f"_acme-challenge.{ZONE}"
    async with services(cfg, "dnsd") as gw:
        knot = Proc("knotd", conf, tmp_path / "knot1.log")
        try:
            await asyncio.to_thread(wait_for_zone, KNOT, kport, knot)
            # ``webgateway check``'s view: both listed name servers serve the same serial
            serials = await asyncio.to_thread(nameserver_serials, cfg)
            assert list(serials) == [f"ns1.{ZONE} ({PRIMARY}:{port})",
                                     f"ns2.{ZONE} ({KNOT}:{kport})"], serials
            assert len(set(serials.values())) == 1, serials
            assert isinstance(next(iter(serials.values())), int), serials
        finally:
            knot.stop()

        certd = factory("certd")(cfg, gw.store, gw.registry)
        await certd.start()
        try:
            end = time.monotonic() + 20
            while not await txt(PRIMARY, port, challenge):
                assert time.monotonic() < end, "certd never published the challenge TXT"
                await asyncio.sleep(0.05)
            await asyncio.sleep(DOWN_SECONDS)
            cert = await gw.store.get_certificate("zone")
            assert cert is None or cert.state != CertState.VALID, cert
            waiting = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
            assert any(f"{KNOT}:{kport}" in m for m in waiting), caplog.text
            assert await txt(PRIMARY, port, challenge), "the TXT must still be published"

            knot = Proc("knotd", conf, tmp_path / "knot2.log")
            try:
                t0 = time.monotonic()
                cert = await wait_cert(gw.store, "zone", seconds=40)
                took = time.monotonic() - t0
                assert set(cert.domains) == {ZONE, f"*.{ZONE}"} and cert.failures == 0, cert
                assert took < 30, took
                knot.check()
            finally:
                knot.stop()
        finally:
            await certd.stop()
