"""dnsd under a flood of hostile packets: honest queries still answered, memory bounded,
and no amplification over UDP (TC=1 within 512 bytes, or the advertised EDNS size)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import pytest

from tests.soak.dns_flood import (
    BIG_TXT_COUNT,
    BIG_TXT_NAME,
    MIX,
    Dnsd,
    corpus,
    dnsd,
    flood_tcp,
    flood_udp,
    legit_once,
)
from tests.soak.gauges import rss_kib
from tests.support import ZONE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsd]:
    with dnsd(tmp_path_factory.mktemp("dnsd"), tcp_idle_timeout=1.0) as d:
        yield d


def _flood_into(out: list[int], d: Dnsd, packets: list[bytes], seconds: float,
                rate: float) -> None:
    out.append(flood_udp(d.host, d.port, packets, seconds, rate))


def _legit_during(d: Dnsd, flood: threading.Thread, at_least: int) -> tuple[int, int]:
    ok = bad = n = 0
    while (n < at_least or flood.is_alive()) and n < 2000:
        if legit_once(d.host, d.port):
            ok += 1
        else:
            bad += 1
        n += 1
    return ok, bad


def test_hostile_flood_keeps_answering_and_memory_bounded(server: Dnsd) -> None:
    """Round 0 floods as fast as a thread can send (more than one dnsd process reads:
    it must survive and answer right after); round 1 is paced at 30,000 hostile
    datagrams/s, which it absorbs: honest queries asked during it are answered."""
    d = server
    assert legit_once(d.host, d.port)
    packets = corpus(12_000, 7)
    start_rss = rss_kib(d.proc.pid)
    rss_after: list[int] = []
    for round_, rate in enumerate((0.0, 30_000.0)):
        more = corpus(6_000, 100 + round_)
        sent: list[int] = []
        flood = threading.Thread(target=_flood_into, args=(sent, d, packets + more, 4.0, rate))
        flood.start()
        ok, bad = _legit_during(d, flood, 50 if rate else 0)
        flood.join(30)
        d.proc.check()
        assert sent and sent[0] > 10_000
        print(f"\nflood {rate or 'max'}/s: {sent[0]} hostile datagrams; honest during it: "
              f"{ok} right, {bad} failed after 3 tries")
        if rate:
            assert ok >= 50 and bad <= ok // 20, (ok, bad)
        after = [legit_once(d.host, d.port) for _ in range(20)]
        assert all(after), after
        rss_after.append(rss_kib(d.proc.pid))
    # the second round does not grow the server past the first: its caches are capped
    assert rss_after[1] - rss_after[0] < 16 * 1024, (start_rss, rss_after)
    assert rss_after[1] < 300 * 1024, rss_after
    print(f"dnsd RSS KiB: before {start_rss}, after flood 1 {rss_after[0]}, "
          f"after flood 2 {rss_after[1]}")


def test_hostile_tcp_frames_and_udp_at_once(server: Dnsd) -> None:
    d = server
    packets = corpus(3000, 11)
    wanted = [p for p in packets if len(p) >= 12 and not p[2] & 0x80]
    replies: list[int] = []
    t = threading.Thread(target=lambda: replies.append(flood_tcp(d.host, d.port, wanted, 20)))
    u = threading.Thread(target=lambda: flood_udp(d.host, d.port, packets, 2.0, 30_000))
    t.start()
    u.start()
    answered = sum(legit_once(d.host, d.port) for _ in range(30))
    t.join(60)
    u.join(30)
    d.proc.check()
    assert answered == 30
    # every frame with a header gets a reply, unless an earlier frame closed the stream
    assert replies and replies[0] > len(wanted) // 2, (replies, len(wanted))
    r = dns.query.tcp(dns.message.make_query(f"alice.{ZONE}", "A"), d.host, port=d.port,
                      timeout=3)
    assert {rd.to_text() for rrset in r.answer for rd in rrset} == {"127.0.0.1"}


# ------------------------------------------------------------------ amplification

def _udp_raw(d: Dnsd, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, (d.host, d.port))
        return s.recv(65535)


@pytest.mark.parametrize("edns", [None, 512, 1232, 4096])
def test_udp_replies_never_exceed_the_limit(server: Dnsd, edns: int | None) -> None:
    d = server
    limit = 512 if edns is None else max(512, edns)
    ratios = []
    for name, rdtype in MIX:
        q = dns.message.make_query(name, rdtype, use_edns=False if edns is None else 0,
                                   payload=edns or 512)
        wire = q.to_wire()
        resp = _udp_raw(d, wire)
        assert len(resp) <= limit, (name, rdtype, len(resp))
        ratios.append((len(resp) / len(wire), name, rdtype))
        r = dns.message.from_wire(resp)
        assert r.id == q.id
    print(f"\nEDNS {edns}: max response/query ratio {max(ratios)[0]:.1f} ({max(ratios)[1:]})")


@pytest.mark.parametrize("rdtype", ["TXT", "ANY"])
@pytest.mark.parametrize("edns", [None, 1232])
def test_big_txt_set_is_truncated_not_amplified(server: Dnsd, rdtype: str,
                                               edns: int | None) -> None:
    d = server
    q = dns.message.make_query(BIG_TXT_NAME, rdtype, use_edns=False if edns is None else 0,
                               payload=edns or 512)
    wire = q.to_wire()
    resp = _udp_raw(d, wire)
    r = dns.message.from_wire(resp)
    assert r.flags & dns.flags.TC
    assert not r.answer and not r.authority
    # nothing beyond what the client sent (the question) plus our own OPT record
    assert len(resp) <= len(wire) + (11 if edns else 0), (len(resp), len(wire))
    full = dns.query.tcp(q, d.host, port=d.port, timeout=3)
    assert sum(len(rrset) for rrset in full.answer) == BIG_TXT_COUNT


def test_seed_reached_the_server(server: Dnsd) -> None:
    """The big TXT set really is served (else the truncation tests prove nothing)."""
    q = dns.message.make_query(BIG_TXT_NAME, "TXT")
    r = dns.query.tcp(q, server.host, port=server.port, timeout=3)
    assert sum(len(rrset) for rrset in r.answer) == BIG_TXT_COUNT
    assert len(r.to_wire()) > 4096
