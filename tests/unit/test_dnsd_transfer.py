"""TSIG checks and zone transfers as bytes in, messages out (no sockets)."""

from __future__ import annotations

import ipaddress
import random
import time
import tracemalloc

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest

from dnsd import wire
from dnsd.journal import Journal
from dnsd.responder import Responder
from dnsd.transfer import MESSAGE_SIZE, Transfers, is_transfer
from dnsd.tsig import BADKEY, BADSIG, BADTIME, NOTAUTH, Signer
from dnsd.zone import ZoneView
from tests.dnszone import ZONE, snapshot, zone_config
from webgateway.config import TsigConfig
from webgateway.model import ChangeSet, Name, Snapshot

SECRET = bytes(range(32))
KEY = dns.tsig.Key("xfr.", SECRET, "hmac-sha256.")
WRONG = dns.tsig.Key("xfr.", bytes(32), "hmac-sha256.")
PEER = ipaddress.ip_address("192.0.2.31")
STRANGER = ipaddress.ip_address("198.51.100.9")


def make(names: int = 0, serial: int = 1) -> Transfers:
    view = ZoneView(zone_config(caa_issuers=("letsencrypt.org",)))
    journal = Journal(view)
    snap = snapshot(serial=serial)
    more = {f"n{i}": Name(f"n{i}", 1, ()) for i in range(names)}
    journal.load(Snapshot(serial, {**snap.names, **more}, snap.domains, snap.txt, {}))
    xfr = Transfers(journal, Signer(TsigConfig("xfr", SECRET)),
                    [ipaddress.ip_network("192.0.2.0/28"), ipaddress.ip_network("192.0.2.31")],
                    Responder(view).handle)
    return xfr


def query(rdtype: str = "AXFR", key: dns.tsig.Key | None = KEY, serial: int | None = None,
          fudge: int = 300, name: str = ZONE) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=False)
    if serial is not None:
        soa = dns.rrset.from_text(name + ".", 0, "IN", "SOA", f". . {serial} 0 0 0 0")
        q.authority.append(soa)
    if key is not None:
        q.use_tsig(key, fudge=fudge)
    return q


def transfer(xfr: Transfers, q: dns.message.Message, peer: object = PEER, tcp: bool = True,
             now: int | None = None) -> list[dns.message.Message]:
    """Run the request and verify every reply as a secondary would (dnspython, chained)."""
    data = q.to_wire()
    out = list(xfr.respond(data, peer, int(time.time()) if now is None else now, tcp))  # type: ignore[arg-type]
    msgs = []
    ctx = None
    for raw in out:
        assert len(raw) <= 65535
        if q.had_tsig:
            m = dns.message.from_wire(raw, keyring=q.keyring, request_mac=q.mac, xfr=True,
                                      tsig_ctx=ctx, multi=True)
            ctx = m.tsig_ctx
        else:
            m = dns.message.from_wire(raw, xfr=True)
        msgs.append(m)
    return msgs


def records(msgs: list[dns.message.Message]) -> list[tuple[str, str, str]]:
    return [(rr.name.to_text().lower(), dns.rdatatype.to_text(rr.rdtype), rd.to_text())
            for m in msgs for rr in m.answer for rd in rr]


def test_axfr_is_the_whole_zone_soa_first_and_last_and_signed() -> None:
    xfr = make()
    msgs = transfer(xfr, query())
    recs = records(msgs)
    assert recs[0][1] == recs[-1][1] == "SOA" and recs[0] == recs[-1]
    assert sum(1 for r in recs if r[1] == "SOA") == 2
    got = {(n, t) for n, t, _ in recs}
    assert {(f"{ZONE}.", "NS"), (f"{ZONE}.", "CAA"), (f"ns1.{ZONE}.", "A"),
            (f"alice.{ZONE}.", "AAAA"), (f"_acme-challenge.{ZONE}.", "TXT")} <= got
    assert all(m.rcode() == 0 and m.had_tsig for m in msgs)
    assert xfr.stats.axfr == 1


def test_a_big_zone_takes_many_messages_of_at_most_64k_each() -> None:
    xfr = make(names=5000)
    msgs = transfer(xfr, query())
    assert len(msgs) > 2
    assert len(records(msgs)) == 2 + 1 + 1 + 1 + 1 + 2 * 5002 + 2 + 1 + 1
    assert all(len(m.to_wire()) <= MESSAGE_SIZE + 200 for m in msgs)


def test_axfr_streams_without_holding_the_transfer() -> None:
    """Peak allocation while streaming 50,000 names stays far below the transfer size."""
    xfr = make(names=50_000)
    tracemalloc.start()
    total = 0
    try:
        for m in xfr.respond(query().to_wire(), PEER, int(time.time())):
            total += len(m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 1_500_000
    assert peak < total / 2, (peak, total)


def test_axfr_keeps_the_serial_it_started_with() -> None:
    xfr = make(names=3000)
    stream = xfr.respond(query().to_wire(), PEER, int(time.time()))
    first = next(stream)
    xfr.journal.apply(ChangeSet(2, {"late": Name("late", 1, ()), "n5": None}, {}, {}, {}))
    raw = [first, *stream]
    text = b"".join(raw)
    assert b"\x04late" not in text and b"\x02n5\xc0\x0c" in text


def test_refused_unsigned_outside_the_acl_or_over_udp() -> None:
    xfr = make()
    (m,) = transfer(xfr, query(key=None))
    assert m.rcode() == dns.rcode.REFUSED and not m.answer
    (m,) = transfer(xfr, query(), peer=STRANGER)
    assert m.rcode() == dns.rcode.REFUSED and m.had_tsig
    (m,) = transfer(xfr, query(), peer=ipaddress.ip_address("::ffff:192.0.2.31"))
    assert m.rcode() == 0  # an IPv4-mapped peer is its IPv4 address
    (m,) = transfer(xfr, query(), tcp=False, peer=None)
    assert m.rcode() == dns.rcode.REFUSED
    (m,) = transfer(xfr, query(name="example.net"))
    assert m.rcode() == NOTAUTH
    assert xfr.stats.refused == 3


def test_tsig_errors_are_notauth_with_the_rfc_8945_error() -> None:
    xfr = make()
    bad = query(key=WRONG)
    raw = next(xfr.respond(bad.to_wire(), PEER, int(time.time())))
    m = dns.message.from_wire(raw, keyring=False)
    assert m.rcode() == NOTAUTH and m.tsig is not None
    assert m.tsig[0].error == BADSIG and m.tsig[0].mac == b""

    other = query(key=dns.tsig.Key("other.", SECRET, "hmac-sha256."))
    m = dns.message.from_wire(next(xfr.respond(other.to_wire(), PEER, int(time.time()))),
                              keyring=False)
    assert m.rcode() == NOTAUTH and m.tsig is not None and m.tsig[0].error == BADKEY

    algo = query(key=dns.tsig.Key("xfr.", SECRET, "hmac-sha512."))
    m = dns.message.from_wire(next(xfr.respond(algo.to_wire(), PEER, int(time.time()))),
                              keyring=False)
    assert m.tsig is not None and m.tsig[0].error == BADKEY
    assert xfr.stats.tsig_errors == 3


def test_badtime_is_signed_and_carries_our_clock() -> None:
    xfr = make()
    q = query()
    later = int(time.time()) + 301
    raw = next(xfr.respond(q.to_wire(), PEER, later))
    with pytest.raises(dns.tsig.PeerBadTime):  # the client sees a valid, signed BADTIME
        dns.message.from_wire(raw, keyring=q.keyring, request_mac=q.mac)
    m = dns.message.from_wire(raw, keyring=False)
    assert m.rcode() == NOTAUTH and m.tsig is not None and m.tsig[0].error == BADTIME
    other = m.tsig[0].other
    assert int.from_bytes(other, "big") == later


def test_a_wide_client_fudge_does_not_widen_our_window() -> None:
    xfr = make()
    q = query(fudge=7200)
    m = dns.message.from_wire(next(xfr.respond(q.to_wire(), PEER, int(time.time()) + 1000)),
                              keyring=False)
    assert m.tsig is not None and m.tsig[0].error == BADTIME


def test_ixfr_one_change_is_one_small_diff() -> None:
    xfr = make(names=1000)
    xfr.journal.apply(ChangeSet(2, {"carol": Name("carol", 1, ())}, {}, {}, {}))
    msgs = transfer(xfr, query("IXFR", serial=1))
    recs = records(msgs)
    types = [t for _, t, _ in recs]
    assert types[:3] == ["SOA"] * 3 and sorted(types[3:5]) == ["A", "AAAA"] and len(types) == 6
    assert [rd.split()[2] for _, t, rd in recs if t == "SOA"] == ["2", "1", "2", "2"]
    assert all(n == f"carol.{ZONE}." for n, t, _ in recs if t != "SOA")
    raw = list(xfr.respond(query("IXFR", serial=1).to_wire(), PEER, int(time.time())))
    assert len(msgs) == len(raw) == 1 and len(raw[0]) < 500
    assert xfr.stats.ixfr == 2


def test_ixfr_from_an_unknown_serial_is_the_whole_zone_and_current_is_the_soa() -> None:
    xfr = make(names=10, serial=5)
    recs = records(transfer(xfr, query("IXFR", serial=3)))
    assert recs[0][1] == recs[-1][1] == "SOA" and len(recs) > 20  # AXFR form
    assert xfr.stats.ixfr_fallback == 1
    recs = records(transfer(xfr, query("IXFR", serial=5)))
    assert [t for _, t, _ in recs] == ["SOA"]
    (m,) = transfer(xfr, query("IXFR", serial=3), tcp=False, peer=None)
    assert [t for _, t, _ in records([m])] == ["SOA"]  # UDP: the SOA only


def test_signed_ordinary_queries_are_answered_and_signed() -> None:
    xfr = make()
    q = query("A", name=f"alice.{ZONE}")
    data = q.to_wire()
    scan = wire.scan_message(data)
    raw = xfr.signed_or_udp(data, scan, False, int(time.time()))
    assert raw is not None
    m = dns.message.from_wire(raw, keyring=q.keyring, request_mac=q.mac)
    assert [rd.to_text() for rd in m.answer[0]] == ["192.0.2.1"]
    responder = Responder(xfr.view)
    responder.special = lambda d, s, t: xfr.signed_or_udp(d, s, t, int(time.time()))
    raw = responder.handle(data)
    assert raw is not None and dns.message.from_wire(raw, keyring=q.keyring,
                                                     request_mac=q.mac).had_tsig


def test_is_transfer() -> None:
    assert is_transfer(query().to_wire())
    assert is_transfer(query("IXFR", serial=1).to_wire())
    assert not is_transfer(query("SOA").to_wire())
    assert not is_transfer(b"\x00" * 5)


def test_hostile_requests_never_raise() -> None:
    """Mutations of signed AXFR/IXFR requests: every answer is bytes or nothing."""
    xfr = make()
    rng = random.Random(14)
    seeds = [query().to_wire(), query("IXFR", serial=1).to_wire(), query("A").to_wire()]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                del data[pos:]
                if len(data) < 2:
                    data += b"\x00\x00"
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        for reply in xfr.respond(bytes(data), PEER, int(time.time())):
            assert isinstance(reply, bytes) and len(reply) <= 65535
        try:
            scan = wire.scan_message(bytes(data))
        except wire.WireError:
            continue
        reply1 = xfr.signed_or_udp(bytes(data), scan, False, int(time.time()))
        assert reply1 is None or isinstance(reply1, bytes)
