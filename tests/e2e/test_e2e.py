"""The user stories, the way they happen on the Internet, all on loopback.

Knot serves the root and ``example.test``, which delegates ``gw.example.test`` to our dnsd
(NS + glue); Unbound resolves from that root; Pebble validates DNS-01 through that Unbound,
as Let's Encrypt would; the owner's backend lives on an IPv6 "overlay" inside a network
namespace. ``webgateway run`` is started as an operator would start it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.e2e.chain import (
    DNSD_ADDR,
    PARENT_ADDR,
    PROXY_ADDR,
    UNBOUND_ADDR,
    ZONE,
    Knot,
    Overlay,
    Unbound,
    tools_missing,
)
from tests.gateway import cli, write_config
from tests.pebble import Pebble, start_pebble
from tests.procs import Proc, wait_tcp

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: port 53 on loopback aliases and a network namespace"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}"),
]

BACKEND_PORT = 8080
BODY = "hello from the overlay\n"


def _port_free(addr: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


@dataclass
class World:
    tmp: Path
    knot: Knot
    pebble: Pebble
    overlay: Overlay
    config: Path
    gateway: Proc
    api: str
    root_pem: Path
    unbound: Unbound

    def resolve(self, name: str, rdtype: str = "A") -> list[str]:
        """Ask Unbound, as any client on the Internet would."""
        q = dns.message.make_query(name, rdtype)
        r = dns.query.udp(q, UNBOUND_ADDR, port=53, timeout=3)
        want = dns.rdatatype.from_text(rdtype)
        return [rd.to_text() for rrset in r.answer if rrset.rdtype == want for rd in rrset]

    def curl(self, host: str, path: str = "/hello.txt") -> subprocess.CompletedProcess[str]:
        addrs = self.resolve(host)
        assert addrs, f"{host} does not resolve through Unbound"
        return subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", str(self.root_pem),
             "--resolve", f"{host}:443:{addrs[0]}", f"https://{host}{path}"],
            capture_output=True, text=True, timeout=30)

    def api_get(self, token: str, path: str) -> Any:
        req = urllib.request.Request(self.api + path,
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())


def _zone_cert_state(db: Path) -> str:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT state, last_error FROM certificates WHERE id='zone'").fetchone()
    finally:
        con.close()
    return f"{row[0]}: {row[1]}" if row else "none"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    udp, tcp = socket.SOCK_DGRAM, socket.SOCK_STREAM
    needed = ((DNSD_ADDR, 53, udp), (PARENT_ADDR, 53, udp), (UNBOUND_ADDR, 53, udp),
              (PROXY_ADDR, 443, tcp), (PROXY_ADDR, 80, tcp))
    for addr, port, kind in needed:
        if not _port_free(addr, port, kind):
            pytest.fail(f"{addr}:{port} is busy; the e2e test needs it")
    tmp = tmp_path_factory.mktemp("e2e")
    with contextlib.ExitStack() as stack:
        knot = Knot(tmp, {f"ns1.{ZONE}": DNSD_ADDR})
        stack.callback(knot.stop)
        unbound = Unbound(tmp, knot.trust_anchor())
        stack.callback(unbound.stop)
        pebble = stack.enter_context(start_pebble(tmp / "pebble", (UNBOUND_ADDR, 53)))
        overlay = stack.enter_context(Overlay.create("e2e"))
        www = tmp / "www"
        www.mkdir()
        (www / "hello.txt").write_text(BODY)
        backend = overlay.serve_http(www, BACKEND_PORT, tmp / "backend.log")
        stack.callback(backend.stop)
        root_pem = tmp / "pebble-root.pem"
        root_pem.write_bytes(pebble.root_pem())

        cfg = write_config(
            tmp,
            zone={"name": ZONE, "gateway_ipv4": [PROXY_ADDR], "gateway_ipv6": [],
                  "nameservers": {f"ns1.{ZONE}": [DNSD_ADDR]}, "negative_ttl": 1},
            dns={"listen": [f"{DNSD_ADDR}:53"]},
            proxy={"https_listen": [f"{PROXY_ADDR}:443"], "http_listen": [f"{PROXY_ADDR}:80"]},
            acme={"directory": pebble.directory, "email": "ops@example.test",
                  "ca_bundle": str(pebble.ca_bundle), "resolver": f"{UNBOUND_ADDR}:53"},
            api={"allow_loopback_backends": False},
            dnssec={"enabled": True},
        )
        # signed from the first answer: the keys are made and our DS is at the parent
        # before the gateway starts, as an operator following the README does
        ds = cli("zone", "ds", "--config", str(cfg))
        assert ds.returncode == 0, ds.stderr
        knot.set_records([(line.split()[0], "DS", " ".join(line.split()[4:]))
                          for line in ds.stdout.splitlines()])
        import tomllib

        api = "http://" + tomllib.loads(cfg.read_text())["api"]["listen"]
        gateway = Proc("webgateway", [sys.executable, "-m", "webgateway.cli", "run",
                                      "--config", str(cfg)], tmp / "webgateway.log")
        stack.callback(gateway.stop)
        host, port = api.removeprefix("http://").rsplit(":", 1)
        wait_tcp(host, int(port), gateway)
        # the zone's wildcard certificate is ordered at start-up, validated through Unbound
        db = tmp / "var" / "webgateway.db"
        end = time.monotonic() + 120
        state = "none"
        while time.monotonic() < end:
            gateway.check()
            state = _zone_cert_state(db)
            if state.startswith("valid"):
                break
            time.sleep(0.2)
        assert state.startswith("valid"), f"zone certificate: {state}\n{gateway.tail()}"
        yield World(tmp, knot, pebble, overlay, cfg, gateway, api, root_pem, unbound)
        assert gateway.stop() == 0, gateway.tail()


def test_check_reports_a_correct_delegation(world: World) -> None:
    r = cli("check", "--config", str(world.config), "--resolver", f"{UNBOUND_ADDR}:53")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"delegates {ZONE} to ns1.{ZONE}" in r.stdout
    assert f"glue for ns1.{ZONE}" in r.stdout and "SOA serial" in r.stdout
    assert f"DS for {ZONE} at ns.example.test ({PARENT_ADDR}) matches our key" in r.stdout
    assert re.search(rf"signatures from ns1.{ZONE} \({DNSD_ADDR}\) are valid for 1[34]\.\d"
                     " more days", r.stdout), r.stdout
    assert f"{ZONE} is delegated correctly" in r.stdout


def test_check_lists_what_to_fix(world: World, tmp_path: Path) -> None:
    text = world.config.read_text()
    bad = tmp_path / "wrong.toml"
    # the operator configured a second name server the parent does not know
    bad.write_text(re.sub(r"nameservers = \{.*\}",
                          f'nameservers = {{ "ns1.{ZONE}" = ["{DNSD_ADDR}"], '
                          f'"ns2.{ZONE}" = ["127.0.0.9"] }}', text))
    r = cli("check", "--config", str(bad), "--resolver", f"{UNBOUND_ADDR}:53")
    assert r.returncode == 1, r.stdout
    fixes = [line for line in r.stdout.splitlines() if line.startswith("FIX")]
    assert any(f"add NS ns2.{ZONE}" in f for f in fixes), r.stdout
    assert any(f"ns2.{ZONE} (127.0.0.9) does not answer" in f for f in fixes), r.stdout
    assert "thing(s) to fix" in r.stderr


def _owner(world: World, name: str) -> dict[str, str]:
    r = cli("owner", "add", name, "--config", str(world.config))
    assert r.returncode == 0, r.stderr
    return {"WEBGATEWAY_URL": world.api, "WEBGATEWAY_TOKEN": r.stdout.strip()}


def test_new_name_is_live_over_https_at_once(world: World) -> None:
    env = _owner(world, "alice")
    backend = f"[{world.overlay.backend_addr}]:{BACKEND_PORT}"
    r = cli("name", "add", "alice", "--backend", backend, env=env)
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    host = f"alice.{ZONE}"
    result = None
    while time.monotonic() - t0 < 5:  # bounded; the figure is printed below
        if world.resolve(host) == [PROXY_ADDR]:
            result = world.curl(host)
            if result.returncode == 0:
                break
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    assert result is not None and result.returncode == 0, result and result.stderr
    assert result.stdout == BODY
    print(f"\nname added -> HTTPS answered via Unbound in {elapsed * 1000:.0f} ms")
    # the answer is the gateway's address, never the backend's
    assert world.resolve(host, "AAAA") == []
    # and plain HTTP is sent to HTTPS
    r2 = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                         "--resolve", f"{host}:80:{PROXY_ADDR}", f"http://{host}/x?y=1"],
                        capture_output=True, text=True, timeout=30)
    assert r2.stdout == f"301 https://{host}/x?y=1", r2.stdout + r2.stderr


def test_custom_domain_through_cname_delegated_dns01(world: World) -> None:
    env = _owner(world, "shopkeeper")
    backend = f"[{world.overlay.backend_addr}]:{BACKEND_PORT}"
    assert cli("name", "add", "shopfront", "--backend", backend, env=env).returncode == 0
    r = cli("domain", "add", "shop.example.test", "--name", "shopfront", env=env)
    assert r.returncode == 0, r.stderr
    records = re.findall(r"^\s+(\S+)\.\s+CNAME\s+(\S+)$", r.stdout, re.M)
    assert len(records) == 2, r.stdout
    # the user creates exactly what the API told them, in their own zone
    world.knot.set_records([(owner.removesuffix(".example.test"), "CNAME", target)
                            for owner, target in records])
    end = time.monotonic() + 120
    domain: dict[str, Any] = {}
    while time.monotonic() < end:
        world.gateway.check()
        domain = world.api_get(env["WEBGATEWAY_TOKEN"], "/v1/domains/shop.example.test")
        if (domain.get("certificate") or {}).get("state") == "valid":
            break
        time.sleep(0.25)
    assert domain["certificate"]["state"] == "valid", domain
    assert domain["state"] == "active", domain
    assert world.resolve("shop.example.test") == [PROXY_ADDR]
    result = world.curl("shop.example.test")
    assert result.returncode == 0, result.stderr
    assert result.stdout == BODY
    # the certificate served is the domain's own, chained to Pebble's root
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{PROXY_ADDR}:443", "-servername",
         "shop.example.test", "-CAfile", str(world.root_pem), "-verify_return_error",
         "-verify_hostname", "shop.example.test"],
        input="", capture_output=True, text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout[-2000:]
    assert "CN = shop.example.test" in out.stdout or "CN=shop.example.test" in out.stdout


# ---------------------------------------------------------------- DNSSEC through a validator


def _validated(addr: str, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    return dns.query.udp(q, addr, port=53, timeout=5)


def _answered(addr: str, name: str, rdtype: str, seconds: float = 5) -> dns.message.Message:
    """Ask (DO=1) until the answer section is not empty, for at most ``seconds``."""
    end = time.monotonic() + seconds
    m = _validated(addr, name, rdtype)
    while not m.answer and time.monotonic() < end:
        time.sleep(0.01)
        m = _validated(addr, name, rdtype)
    return m


def _ad(m: dns.message.Message) -> bool:
    return bool(m.flags & dns.flags.AD)


def test_signed_answers_validate_at_the_resolver(world: World) -> None:
    env = _owner(world, "signer")
    backend = f"[{world.overlay.backend_addr}]:{BACKEND_PORT}"
    assert cli("name", "add", "signed", "--backend", backend, env=env).returncode == 0
    host = f"signed.{ZONE}"
    _answered(UNBOUND_ADDR, host, "A")
    cases = [(host, "A", True), (ZONE, "SOA", True), (ZONE, "CAA", False), (ZONE, "DNSKEY", True),
             (f"nx-{os.getpid()}.{ZONE}", "A", False),  # no such name: compact denial
             (host, "TXT", False), (f"_acme.{ZONE}", "A", False)]  # NODATA, empty non-terminal
    for name, rdtype, has_answer in cases:
        m = _validated(UNBOUND_ADDR, name, rdtype)
        assert m.rcode() == dns.rcode.NOERROR, (name, rdtype, m)
        assert _ad(m), f"{name} {rdtype} not validated (AD=0):\n{m}"
        assert bool(m.answer) == has_answer, (name, rdtype, m)


def test_a_new_name_validates_within_a_second(world: World) -> None:
    env = _owner(world, "quick")
    backend = f"[{world.overlay.backend_addr}]:{BACKEND_PORT}"
    host = f"quick.{ZONE}"
    r = cli("name", "add", "quick", "--backend", backend, env=env)
    t0 = time.monotonic()
    assert r.returncode == 0, r.stderr
    m = _answered(UNBOUND_ADDR, host, "A")
    elapsed = time.monotonic() - t0
    assert m.answer and _ad(m), m
    print(f"\nname added -> validated A (AD=1) via Unbound in {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0


def test_the_dns01_txt_validates(world: World) -> None:
    """What certd publishes for DNS-01 is signed as soon as it is served."""
    import asyncio

    from webgateway.sqlite_store import SqliteStore

    fqdn = f"_acme-challenge.txtcheck.{ZONE}"

    async def put(value: str | None) -> None:
        store = SqliteStore(world.tmp / "var" / "webgateway.db")
        await store.open()
        try:
            if value is None:
                await store.remove_txt(fqdn)
            else:
                await store.add_txt(fqdn, value)
        finally:
            await store.close()

    asyncio.run(put("token-for-dns01"))
    t0 = time.monotonic()
    try:
        # asked at dnsd first: a resolver asked before the change would cache the denial
        served = _answered(DNSD_ADDR, fqdn, "TXT")
        assert served.answer, served
        assert any(r.rdtype == dns.rdatatype.RRSIG for r in served.answer), served
        m = _validated(UNBOUND_ADDR, fqdn, "TXT")
        elapsed = time.monotonic() - t0
        assert _ad(m) and m.answer[0][0].strings == (b"token-for-dns01",), m
        print(f"\nTXT stored -> validated via Unbound in {elapsed * 1000:.0f} ms")
        assert elapsed < 1.0, elapsed
    finally:
        asyncio.run(put(None))


class _TamperingRelay:
    """A UDP relay in front of dnsd that flips the last byte of the first A record's RDATA
    in answers about names starting ``tampered``: a forger on the path."""

    def __init__(self, listen: str, upstream: str) -> None:
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((listen, 53))
        self.sock.settimeout(0.2)
        self.upstream = upstream
        self.flipped = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.settimeout(2)
        try:
            while not self.stop.is_set():
                try:
                    data, client = self.sock.recvfrom(4096)
                    up.sendto(data, (self.upstream, 53))
                    reply, _ = up.recvfrom(65535)
                except OSError:
                    continue
                self.sock.sendto(self._tamper(reply), client)
        finally:
            up.close()

    def _tamper(self, reply: bytes) -> bytes:
        m = dns.message.from_wire(reply)
        if not m.question or not m.question[0].name.labels[0].lower().startswith(b"tampered"):
            return reply
        for rrset in m.answer:
            if rrset.rdtype == dns.rdatatype.A:
                rdata = rrset[0].to_wire()
                at = reply.find(rdata, 12 + len(m.question[0].name.to_wire() or b"") + 4)
                if at > 0:
                    self.flipped += 1
                    end = at + len(rdata) - 1
                    return reply[:end] + bytes([reply[end] ^ 0x01]) + reply[end + 1:]
        return reply

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


RELAY_ADDR = "127.0.0.6"
TAMPER_RESOLVER = "127.0.0.7"


def test_a_tampered_answer_is_servfail(world: World) -> None:
    env = _owner(world, "victim")
    backend = f"[{world.overlay.backend_addr}]:{BACKEND_PORT}"
    for label in ("tampered", "intact"):
        assert cli("name", "add", label, "--backend", backend, env=env).returncode == 0
    relay = _TamperingRelay(RELAY_ADDR, DNSD_ADDR)
    try:
        resolver = Unbound(world.tmp, world.knot.trust_anchor(), TAMPER_RESOLVER,
                           stub=(ZONE, RELAY_ADDR))
        try:
            # the same path validates when nothing is changed on it...
            good = _answered(TAMPER_RESOLVER, f"intact.{ZONE}", "A")
            assert _ad(good) and [rd.to_text() for rd in good.answer[0]] == [PROXY_ADDR], good
            # ...and one flipped bit in an A record is caught
            bad = _validated(TAMPER_RESOLVER, f"tampered.{ZONE}", "A")
            assert relay.flipped >= 1
            assert bad.rcode() == dns.rcode.SERVFAIL, bad
            assert not bad.answer
        finally:
            resolver.stop()
    finally:
        relay.close()


def test_delv_validates_from_the_root_anchor(world: World, tmp_path: Path) -> None:
    if shutil.which("delv") is None:
        pytest.skip("delv (bind9-dnsutils) is not installed")
    flags, proto, alg, key = world.knot.trust_anchor().split(" ", 2)[2].split(" ", 3)
    anchors = tmp_path / "anchors.conf"
    anchors.write_text(f'trust-anchors {{ . static-key {flags} {proto} {alg} "{key}"; }};\n')
    r = subprocess.run(["delv", f"@{UNBOUND_ADDR}", "-a", str(anchors), "+root", ZONE, "SOA"],
                       capture_output=True, text=True, timeout=30)
    assert "; fully validated" in r.stdout, r.stdout + r.stderr


class _Watcher:
    """Asks Unbound every 50 ms, in a thread, for answers that must stay validated (AD=1)
    through a key rollover; keeps every answer that was not."""

    def __init__(self, questions: list[tuple[str, str]]) -> None:
        import threading

        self.questions = questions
        self.asked = 0
        self.bad: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < end:
            for name, rdtype in self.questions:
                try:
                    m = _validated(UNBOUND_ADDR, name, rdtype)
                except Exception as e:  # a lost UDP answer is not a validation failure
                    self.bad.append(f"{name} {rdtype}: {type(e).__name__}")
                    continue
                self.asked += 1
                if not _ad(m) or m.rcode() != dns.rcode.NOERROR:
                    self.bad.append(f"{name} {rdtype}: rcode {dns.rcode.to_text(m.rcode())}"
                                    f" AD={_ad(m)}")
            self.stop.wait(0.05)

    def close(self) -> list[str]:
        self.stop.set()
        self.thread.join(10)
        return self.bad


def test_a_key_rollover_keeps_validating_at_unbound(world: World) -> None:
    """Every phase of a CSK roll, with Unbound asked all along. Unbound caps every TTL at
    5 s (cache-max-ttl), so its caches hold nothing older than that: the phases are moved on
    (as dnsd's tick would) with RFC 7583 timings built on 5 s TTLs and 1 s propagation."""
    import asyncio

    from webgateway import keyroll, zonekeys
    from webgateway.keyseal import KeySeal
    from webgateway.sqlite_store import SqliteStore

    timing = keyroll.Timing(propagation=1, ttl_key=5, ttl_sig=5, parent_propagation=1, ttl_ds=5)

    async def advance() -> list[zonekeys.ZoneKey]:
        store = SqliteStore(world.tmp / "var" / "webgateway.db")
        await store.open()
        try:
            return await keyroll.advance_stored(store, KeySeal(), timing)
        finally:
            await store.close()

    def served_keys() -> set[int]:
        m = _answered(DNSD_ADDR, ZONE, "DNSKEY")
        return {dns.dnssec.key_id(k) for rr in m.answer if rr.rdtype == dns.rdatatype.DNSKEY
                for k in rr}

    def cds_tags() -> set[int]:
        m = _answered(DNSD_ADDR, ZONE, "CDS")
        return {k.key_tag for rr in m.answer if rr.rdtype == dns.rdatatype.CDS for k in rr}

    def wait_for(what: Any, want: Any, seconds: float = 5) -> None:
        end = time.monotonic() + seconds
        while what() != want:
            assert time.monotonic() < end, f"{what.__name__}: {what()} != {want}"
            time.sleep(0.05)

    env = _owner(world, "roller")
    backend = f"[{world.overlay.backend_addr}]:{BACKEND_PORT}"
    assert cli("name", "add", "rolled", "--backend", backend, env=env).returncode == 0
    (old,) = served_keys()
    watcher = _Watcher([(ZONE, "SOA"), (f"rolled.{ZONE}", "A"), (f"missing.{ZONE}", "A"),
                        (ZONE, "DNSKEY")])
    try:
        time.sleep(1)
        r = cli("zone", "rollover", "--config", str(world.config))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: len(served_keys()), 2)
        (new,) = served_keys() - {old}
        print(f"\nrollover {old} -> {new}: published")
        time.sleep(timing.ipub)
        asyncio.run(advance())
        wait_for(cds_tags, {new})
        ds = cli("zone", "ds", "--config", str(world.config)).stdout.split()
        assert ds[4] == str(new), ds
        world.knot.replace_records("gw", "DS", [" ".join(ds[4:])])
        print("ready: the parent's DS replaced")
        r = cli("zone", "rollover", "--config", str(world.config), "--poll-parent",
                "--resolver", f"{UNBOUND_ADDR}:53")
        assert r.returncode == 0 and "every parent server (1) serves the DS" in r.stderr, (
            r.stdout + r.stderr)
        assert f"key(s) {old} retire at" in r.stdout, r.stdout
        time.sleep(timing.iret_ds)
        asyncio.run(advance())
        wait_for(served_keys, {new})
        print("old key retired")
        time.sleep(6)  # past every TTL Unbound can hold: only the new key is left anywhere
    finally:
        bad = watcher.close()
    assert watcher.asked > 100 and not bad, f"{len(bad)} bad of {watcher.asked}: {bad[:10]}"
    print(f"{watcher.asked} answers from Unbound through the roll, every one AD=1")
    r = cli("check", "--config", str(world.config), "--resolver", f"{UNBOUND_ADDR}:53")
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_says_fix_when_the_parents_ds_is_not_our_key(world: World) -> None:
    """Last in the module: the parent's DS is swapped for a stranger's and put back."""
    ds = cli("zone", "ds", "--config", str(world.config)).stdout.split()
    good = " ".join(ds[4:])
    wrong = " ".join([*ds[4:7], "0" * 64])
    world.knot.unset_records("gw", "DS")
    world.knot.set_records([("gw", "DS", wrong)])
    try:
        r = cli("check", "--config", str(world.config), "--resolver", f"{UNBOUND_ADDR}:53")
        assert r.returncode == 1, r.stdout
        fixes = [line for line in r.stdout.splitlines() if line.startswith("FIX")]
        assert any("matches none of our keys" in f and "webgateway zone ds" in f
                   for f in fixes), r.stdout
    finally:
        world.knot.unset_records("gw", "DS")
        world.knot.set_records([("gw", "DS", good)])
