"""Knot and NSD as real secondaries of dnsd: TSIG, AXFR, IXFR and NOTIFY on loopback.

dnsd (with the API, in-process) listens on 127.0.0.30, Knot on 127.0.0.31 and NSD on
127.0.0.32, each on a free high port, all sharing one TSIG key. The secondaries are
started and stopped by PID; their logs land in the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.dnssec
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnsd.service import DnsService
from tests.dnsd_harness import SHOP
from tests.dnssec_check import validate_section
from tests.procs import Proc
from tests.secondaries import KNOT, PRIMARY, SECRET, TSIG, knot_conf, wait_for_zone
from tests.support import ZONE, Running, fixed_label, free_port, held_domain, make_config, services
from webgateway.addresses import parse_hostport
from webgateway.model import Name
from webgateway.tokens import hash_token

pytestmark = pytest.mark.skipif(not (shutil.which("knotd") and shutil.which("nsd")
                                     and shutil.which("kdig")),
                                reason="needs knotd, nsd and kdig (apt: knot nsd knot-dnsutils)")

WRONG = base64.b64encode(bytes(range(1, 33))).decode()
ZONE_NAMES = 300
NSD, STRANGER = "127.0.0.32", "127.0.0.33"


@dataclass
class Setup:
    gw: Running
    port: int  # dnsd's
    knot: Proc
    knot_port: int
    nsd: Proc
    nsd_port: int
    api: str
    token: str  # an owner's

    @property
    def dnsd(self) -> DnsService:
        svc = self.gw.services["dnsd"]
        assert isinstance(svc, DnsService)
        return svc


def nsd_conf(d: Path, port: int, primary_port: int) -> Path:
    conf = d / "nsd.conf"
    conf.write_text(f"""server:
    ip-address: {NSD}@{port}
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    zonelistfile: "{d}/zone.list"
    logfile: "{d}/nsd.log"
    verbosity: 2
    xfrd-reload-timeout: 0
    server-count: 1
remote-control:
    control-enable: no
key:
    name: xfr
    algorithm: hmac-sha256
    secret: "{SECRET}"
zone:
    name: {ZONE}
    zonefile: "{d}/{ZONE}.zone"
    request-xfr: {PRIMARY}@{primary_port} xfr
    allow-notify: {PRIMARY} xfr
    outgoing-interface: {NSD}
""")
    return conf


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    port = free_port(host=PRIMARY)
    kport, nport = free_port(host=KNOT), free_port(host=NSD)
    cfg = make_config(tmp_path, zone={"caa_issuers": ["letsencrypt.org"]},
                      api={"max_names_per_owner": 1000}, dns={
        "listen": [f"{PRIMARY}:{port}"],
        "secondaries": [f"{KNOT}:{kport}", f"{NSD}:{nport}"],
        "tsig": TSIG,
    })
    async with services(cfg, "api", "dnsd") as gw:
        api = f"http://127.0.0.1:{cfg.api.listen.port}"
        admin = cfg.api.admin_token_file.read_text().strip()
        async with aiohttp.ClientSession() as http, http.post(
                api + "/v1/owners", json={"name": "carol"},
                headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 201, await r.text()
            token = (await r.json())["token"]
        owner = await gw.store.owner_by_token_hash(hash_token(token))
        assert owner is not None
        backends = (parse_hostport("127.0.0.1:9"),)
        owner_id = owner.id
        for i in range(ZONE_NAMES):  # so a whole zone is much bigger than one change
            await gw.store.put_name(Name(f"n{i}", owner_id, backends), 1000)
        async with secondaries(tmp_path, port, kport, nport) as (knot, nsd):
            yield Setup(gw, port, knot, kport, nsd, nport, api, token)


@contextlib.asynccontextmanager
async def secondaries(tmp_path: Path, port: int, kport: int, nport: int
                      ) -> AsyncIterator[tuple[Proc, Proc]]:
    """Knot and NSD as secondaries of dnsd on ``port``, once both loaded the zone."""
    kdir, ndir = tmp_path / "knot", tmp_path / "nsd"
    kdir.mkdir()
    ndir.mkdir()
    knot = Proc("knotd", ["knotd", "-c", str(knot_conf(kdir, kport, port))],
                tmp_path / "knot.log")
    nsd = Proc("nsd", ["nsd", "-d", "-c", str(nsd_conf(ndir, nport, port))],
               tmp_path / "nsd.out")
    try:
        await asyncio.gather(asyncio.to_thread(wait_for_zone, KNOT, kport, knot),
                             asyncio.to_thread(wait_for_zone, NSD, nport, nsd))
        yield knot, nsd
    finally:
        knot.stop()
        nsd.stop()


async def ask(host: str, port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), host, port=port,
                                    timeout=2)


async def kdig(*args: str) -> str:
    """kdig in a thread: dnsd answers from this test's event loop."""
    r = await asyncio.to_thread(subprocess.run, ["kdig", "+tcp", "+nocookie", *args],
                                capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


async def put_name(s: Setup, label: str) -> None:
    """One write through the owners' API."""
    async with aiohttp.ClientSession() as http, http.put(
            f"{s.api}/v1/names/{label}", json={"backends": ["127.0.0.1:9"]},
            headers={"Authorization": f"Bearer {s.token}"}) as r:
        assert r.status in (200, 201), await r.text()


async def test_a_write_reaches_both_secondaries_within_a_second_by_ixfr(setup: Setup) -> None:
    s = setup
    knot_log_before = len(s.knot.log.read_text())
    nsd_log = s.nsd.log.parent / "nsd" / "nsd.log"
    nsd_log_before = len(nsd_log.read_text())
    t0 = time.monotonic()
    await put_name(s, "carol")
    waiting = {(KNOT, s.knot_port), (NSD, s.nsd_port)}
    seen: dict[str, float] = {}
    while waiting and time.monotonic() - t0 < 5:
        for host, port in list(waiting):
            r = await ask(host, port, f"carol.{ZONE}")
            if r.answer:
                seen[host] = time.monotonic() - t0
                waiting.discard((host, port))
        await asyncio.sleep(0.01)
    assert not waiting, f"not answered by {waiting} after 5 s; got {seen}"
    assert max(seen.values()) < 1.0, seen
    serial = s.dnsd.view.serial
    for host, port in ((KNOT, s.knot_port), (NSD, s.nsd_port)):
        r = await ask(host, port, ZONE, "SOA")
        assert r.answer[0][0].serial == serial
    new_log = s.knot.log.read_text()[knot_log_before:]
    assert "IXFR, incoming" in new_log and "finished" in new_log, new_log
    assert "AXFR, incoming" not in new_log, new_log
    sizes = [int(b) for b in re.findall(r"(\d+) bytes", new_log)]
    assert sizes and max(sizes) < 1000, new_log  # the zone is over 300 * 2 records
    new_log = nsd_log.read_text()[nsd_log_before:]
    sizes = [int(b) for b in re.findall(r"of (\d+) bytes", new_log)]
    assert sizes and max(sizes) < 1000, new_log
    stats = s.dnsd.transfers.stats
    assert stats.ixfr >= 2 and s.dnsd.notifier is not None and s.dnsd.notifier.acked >= 2

    # The secondaries keep serving the zone while our dnsd is down.
    await s.dnsd.stop()
    for host, port in ((KNOT, s.knot_port), (NSD, s.nsd_port)):
        r = await ask(host, port, f"carol.{ZONE}")
        assert [rd.to_text() for rd in r.answer[0]] == ["127.0.0.1"]


async def test_a_burst_of_writes_gives_few_notifies(setup: Setup) -> None:
    s = setup
    assert s.dnsd.notifier is not None
    sent = s.dnsd.notifier.sent
    for i in range(10):
        await put_name(s, f"burst{i}")
    end = time.monotonic() + 5
    while time.monotonic() < end:
        r = await ask(KNOT, s.knot_port, f"burst9.{ZONE}")
        if r.answer:
            break
        await asyncio.sleep(0.02)
    assert r.answer
    # 2 secondaries; one NOTIFY at once and then at most one per 0.5 s each
    assert s.dnsd.notifier.sent - sent <= 2 * 4, s.dnsd.notifier.sent - sent


async def test_transfer_needs_the_key_and_an_allowed_address(setup: Setup) -> None:
    s = setup
    at = ["-p", str(s.port), f"@{PRIMARY}"]
    out = await kdig(*at, "-b", KNOT, "AXFR", ZONE)
    assert "REFUSED" in out, out
    out = await kdig(*at, "-b", STRANGER, "-y", f"hmac-sha256:xfr:{SECRET}", "AXFR", ZONE)
    assert "REFUSED" in out, out
    out = await kdig(*at, "-b", KNOT, "-y", f"hmac-sha256:xfr:{WRONG}", "AXFR", ZONE)
    assert "BADSIG" in out, out
    out = await kdig(*at, "-b", KNOT, "-y", f"hmac-sha256:other:{SECRET}", "AXFR", ZONE)
    assert "BADKEY" in out, out
    out = await kdig(*at, "-b", KNOT, "-y", f"hmac-sha256:xfr:{SECRET}", "AXFR", ZONE)
    assert f"(1 messages, {7 + 2 * ZONE_NAMES} records)" in out and "ERROR:" not in out, out
    assert s.dnsd.transfers.stats.refused >= 2 and s.dnsd.transfers.stats.tsig_errors >= 2


async def test_kdig_axfr_matches_the_answers_name_by_name(setup: Setup) -> None:
    s = setup
    await put_name(s, "dave")
    store = s.gw.store
    dave = await store.get_name("dave")
    assert dave is not None
    await held_domain(store, SHOP, "dave", dave.owner_id, fixed_label(SHOP))
    await held_domain(store, f"promo.{ZONE}", "dave", dave.owner_id)
    await store.add_txt(f"_acme-challenge.{ZONE}", "wildcard-token")
    await store.add_txt(f"{fixed_label(SHOP)}._acme.{ZONE}", "shop-token")
    await _caught_up(s)
    out = await kdig("-p", str(s.port), f"@{PRIMARY}", "-b", NSD, "-y", f"hmac-sha256:xfr:{SECRET}",
               "+nocomments", "+noheader", "+nostats", "AXFR", ZONE)
    rrsets: dict[tuple[str, str], set[str]] = {}
    soas = 0
    for line in out.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        name, _ttl, _cls, rtype, rdata = line.split(None, 4)
        if rtype == "TSIG":
            continue
        if rtype == "SOA":
            soas += 1
        rrsets.setdefault((name.lower(), rtype), set()).add(rdata.strip())
    assert soas == 2 and (f"dave.{ZONE}.", "A") in rrsets, out
    types = {t for _, t in rrsets}
    assert {"SOA", "NS", "A", "AAAA", "CAA", "TXT", "CNAME"} <= types, out
    for (name, rtype), want in rrsets.items():
        for host, port in ((PRIMARY, s.port), (KNOT, s.knot_port)):
            r = await ask(host, port, name, rtype)
            got = {rd.to_text() for rrset in r.answer if rrset.rdtype ==
                   dns.rdatatype.from_text(rtype) for rd in rrset}
            assert got == want, (host, name, rtype, got, want)


async def _caught_up(s: Setup, seconds: float = 5) -> None:
    """Until Knot serves dnsd's serial (NOTIFY, then IXFR)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        r = await ask(KNOT, s.knot_port, ZONE, "SOA")
        if r.answer and r.answer[0][0].serial == s.dnsd.view.serial:
            return
    raise AssertionError("the secondary did not catch up")


def _validate_section(section: list[dns.rrset.RRset],
                      keys: dict[dns.name.Name, dns.rrset.RRset]) -> set[int]:
    return set(validate_section(section, keys))


def _covers(nsec: dns.rrset.RRset, name: dns.name.Name) -> bool:
    """The NSEC proves ``name`` absent: owner < name < next, or the chain's last link."""
    nxt = nsec[0].next
    return nsec.name < name < nxt or (nxt <= nsec.name and (name > nsec.name or name < nxt))


async def test_knot_and_nsd_serve_the_signed_zone_and_it_validates(tmp_path: Path) -> None:
    """With [dnssec] on, a transfer carries every RRSIG and a full NSEC chain: both
    secondaries answer DO=1 queries that validate with our DNSKEY, names and missing
    names alike, and a new name reaches them signed."""
    port = free_port(host=PRIMARY)
    kport, nport = free_port(host=KNOT), free_port(host=NSD)
    cfg = make_config(tmp_path, dnssec={"enabled": True}, dns={
        "listen": [f"{PRIMARY}:{port}"], "secondaries": [f"{KNOT}:{kport}", f"{NSD}:{nport}"],
        "tsig": TSIG})
    apex = dns.name.from_text(ZONE)
    async with services(cfg, "dnsd") as gw:
        owner = await gw.store.create_owner("carol", "h" * 64)
        for i in range(50):
            await gw.store.put_name(Name(f"n{i}", owner.id, ()), 100)
        await gw.store.add_txt(f"_acme-challenge.{ZONE}", "token")
        for _ in range(100):  # dnsd has followed the store: the first transfer has it all
            if (await ask(PRIMARY, port, f"_acme-challenge.{ZONE}", "TXT")).answer:
                break
            await asyncio.sleep(0.05)
        async with secondaries(tmp_path, port, kport, nport):
            q = dns.message.make_query(ZONE, "DNSKEY", want_dnssec=True)
            ours = await dns.asyncquery.tcp(q, PRIMARY, port=port, timeout=2)
            keyset = ours.find_rrset(ours.answer, apex, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
            keys = {apex: keyset}
            for host, sport in ((KNOT, kport), (NSD, nport)):
                async def dnssec(name: str, rdtype: str, h: str = host, p: int = sport
                                 ) -> dns.message.Message:
                    q = dns.message.make_query(name, rdtype, want_dnssec=True)
                    return await dns.asyncquery.tcp(q, h, port=p, timeout=2)

                m = await dnssec(ZONE, "DNSKEY")
                assert _validate_section(m.answer, keys) == {dns.rdatatype.DNSKEY}, host
                for name, rdtype in ((f"n7.{ZONE}", "A"), (ZONE, "SOA"), (ZONE, "NS"),
                                     (f"_acme-challenge.{ZONE}", "TXT")):
                    m = await dnssec(name, rdtype)
                    assert m.rcode() == 0 and m.answer, (host, name, m)
                    assert dns.rdatatype.from_text(rdtype) in _validate_section(m.answer, keys)
                m = await dnssec(f"missing.{ZONE}", "A")  # NXDOMAIN: the NSEC chain proves it
                assert m.rcode() == dns.rcode.NXDOMAIN, (host, m)
                assert dns.rdatatype.NSEC in _validate_section(m.authority, keys)
                missing = dns.name.from_text(f"missing.{ZONE}")
                assert any(_covers(r, missing) for r in m.authority
                           if r.rdtype == dns.rdatatype.NSEC), (host, m)
                m = await dnssec(f"n7.{ZONE}", "TXT")  # NODATA: the name's own NSEC
                assert m.rcode() == 0 and not m.answer
                (nsec,) = [r for r in m.authority if r.rdtype == dns.rdatatype.NSEC]
                assert nsec.name == dns.name.from_text(f"n7.{ZONE}")
                assert _validate_section(m.authority, keys) >= {dns.rdatatype.NSEC}
            await gw.store.put_name(Name("fresh", owner.id, ()), 100)
            t0 = time.monotonic()
            for host, sport in ((KNOT, kport), (NSD, nport)):
                while True:
                    q = dns.message.make_query(f"fresh.{ZONE}", "A", want_dnssec=True)
                    m = await dns.asyncquery.tcp(q, host, port=sport, timeout=2)
                    if m.answer or time.monotonic() - t0 > 10:
                        break
                    await asyncio.sleep(0.05)
                assert m.answer, f"{host} never served fresh.{ZONE}"
                assert _validate_section(m.answer, keys) == {dns.rdatatype.A}
