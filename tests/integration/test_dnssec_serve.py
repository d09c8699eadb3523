"""DNSSEC on real sockets: the CLI's DS, dnsd's signed answers over UDP and TCP, fresh names."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import dns.asyncquery
import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.certd_harness import dns_target
from tests.gateway import cli, write_config
from tests.support import ZONE, make_config, services
from webgateway import zonekeys
from webgateway.model import Name


def test_zone_ds_makes_the_key_once_and_prints_only_the_ds(tmp_path: Path) -> None:
    off = write_config(tmp_path)
    r = cli("zone", "ds", "--config", str(off))
    assert r.returncode == 1 and "dnssec.enabled is false" in r.stderr, r.stderr
    cfg = write_config(tmp_path, dnssec={"enabled": True})
    first = cli("zone", "ds", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    (line,) = first.stdout.splitlines()
    owner, _ttl, cls, rtype, tag, alg, digest_type, digest = line.split()
    assert (owner, cls, rtype, alg, digest_type) == (f"{ZONE}.", "IN", "DS", "13", "2")
    assert len(digest) == 64 and int(tag) < 65536
    assert "PRIVATE" not in first.stdout + first.stderr
    assert cli("zone", "ds", "--config", str(cfg)).stdout == first.stdout  # generated once
    db = tmp_path / "var" / "webgateway.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


async def _ask(host: str, port: int, name: str, rdtype: str, tcp: bool = False
               ) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=2)
    return await dns.asyncquery.udp(q, host, port=port, timeout=2)


def _check(m: dns.message.Message, keys: dict[dns.name.Name, dns.rrset.RRset]) -> int:
    n = 0
    for section in (m.answer, m.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            sig = next(s for s in section if s.rdtype == dns.rdatatype.RRSIG
                       and s.name == rrset.name and s.covers == rrset.rdtype)
            dns.dnssec.validate(rrset, sig, keys)
            n += 1
    return n


async def test_dnsd_serves_signed_answers_and_signs_new_names_at_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dnssec={"enabled": True})
    host, port = dns_target(cfg)
    async with services(cfg, "dnsd") as run:
        m = await _ask(host, port, ZONE, "DNSKEY", tcp=True)
        apex = dns.name.from_text(ZONE)
        keyset = m.find_rrset(m.answer, apex, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        keys = {apex: keyset}
        stored = zonekeys.load(await run.store.get_meta(zonekeys.META_KEY) or "")
        assert {k.key for k in keyset} == {k.dnskey[4:] for k in stored}
        assert _check(m, keys) == 1
        for name, rdtype, tcp in [(ZONE, "SOA", False), (f"nx.{ZONE}", "A", False),
                                  (ZONE, "NS", True), (ZONE, "TXT", True)]:
            assert _check(await _ask(host, port, name, rdtype, tcp), keys) >= 1
        t0 = time.monotonic()
        owner = await run.store.create_owner("alice", "h" * 64)
        await run.store.put_name(Name("fresh", owner.id, ()), 100)
        while True:
            m = await _ask(host, port, f"fresh.{ZONE}", "A")
            if m.answer or time.monotonic() - t0 > 5:
                break
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        assert m.answer and _check(m, keys) == 1
        assert elapsed < 1.0, elapsed
        plain = await dns.asyncquery.udp(dns.message.make_query(f"fresh.{ZONE}", "A"), host,
                                         port=port, timeout=2)
        assert len(plain.answer) == 1 and not plain.authority  # DO=0: no DNSSEC records
