"""The sans-IO parser and responder: exact parsing, and hostile bytes in bounded time.

The corpus test pushes over 100,000 generated packets (mutations of real queries,
compression-pointer chains and loops, random headers and random bytes) through the
responder: every one must give either no reply or a well-formed reply with the
query's ID, never an exception.
"""

from __future__ import annotations

import random
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd import wire
from dnsd.responder import Responder
from dnsd.zone import ZoneView
from tests.dnszone import ZONE, snapshot, zone_config
from tests.hostile_dns import mutate, pointer_packet, seeds


@pytest.fixture(scope="module")
def responder() -> Responder:
    view = ZoneView(zone_config())
    view.load(snapshot())
    return Responder(view)


# ------------------------------------------------------------------ exact parsing


def test_parse_fast_reads_question_and_edns() -> None:
    m = dns.message.make_query("AlIcE.gw.test", "AAAA", use_edns=0, payload=4000,
                               want_dnssec=True)
    q = wire.parse_fast(m.to_wire())
    assert q is not None
    assert q.qname == b"\x05alice\x02gw\x04test\x00" and q.qtype == wire.AAAA
    assert q.qclass == wire.IN and q.ekey == wire.EDNS_DO and q.udp_size == 4000
    m = dns.message.make_query("gw.test", "SOA", use_edns=False)
    q = wire.parse_fast(m.to_wire())
    assert q is not None and q.ekey == wire.NO_EDNS and q.udp_size == 512
    assert q.question == m.to_wire()[12:]  # the whole question, as sent


def test_parse_fast_declines_unusual_shapes() -> None:
    base = dns.message.make_query("gw.test", "SOA", use_edns=False).to_wire()
    assert wire.parse_fast(base[:-1]) is None  # truncated
    assert wire.parse_fast(base + b"x") is None  # trailing byte
    assert wire.parse_fast(base[:2] + b"\x80\x00" + base[4:]) is None  # a response
    assert wire.parse_fast(base[:2] + b"\x28\x00" + base[4:]) is None  # opcode UPDATE
    assert wire.parse_fast(base[:4] + b"\x00\x02" + base[6:]) is None  # QDCOUNT 2
    ptr = base[:12] + b"\xc0\x0c\x00\x06\x00\x01"
    assert wire.parse_fast(ptr) is None  # compressed question


def test_scan_rejects_pointer_loops_and_forward_pointers_fast() -> None:
    hdr = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    for body in (b"\xc0\x0c", b"\xc0\x0e\x00", b"\x01a\xc0\x0c", b"\x3f" + b"a" * 10):
        with pytest.raises(wire.WireError):
            wire.scan_message(hdr + body + b"\x00\x01\x00\x01")
    # a chain as long as a 64 KiB message allows: an opaque NULL rdata full of pointers,
    # each to the one before it, and a second record owned by the last of them
    q = b"\x00\x00\x01\x00\x01"  # root, A, IN at offset 12
    rd_at = 12 + len(q) + 11  # first rdata byte of the first record
    chain = bytearray(b"\x00")
    for i in range(30000):
        prev = rd_at + (2 * i - 1 if i else 0)
        chain += bytes((0xC0 | prev >> 8, prev & 0xFF))
    last = rd_at + len(chain) - 2
    rec1 = b"\x00" + struct.pack(">HHIH", 10, 1, 0, len(chain)) + bytes(chain)
    rec2 = bytes((0xC0 | last >> 8, last & 0xFF)) + struct.pack(">HHIH", 1, 1, 0, 0)
    packet = struct.pack(">HHHHHH", 2, 0, 1, 2, 0, 0) + q + rec1 + rec2
    assert len(packet) < 65536
    t0 = time.process_time()
    with pytest.raises(wire.WireError, match="too many compression pointers"):
        wire.scan_message(packet)
    assert time.process_time() - t0 < 1.0  # bounded, not quadratic (generous bound)
    reply = Responder(_VIEW).handle(packet, tcp=True)
    assert reply is not None and reply[3] & 0xF == dns.rcode.FORMERR


def test_name_helpers_roundtrip() -> None:
    w = wire.name_to_wire("Shop.Example.ORG.")
    assert w == b"\x04shop\x07example\x03org\x00"
    assert wire.wire_to_text(w) == "shop.example.org."
    assert wire.name_to_wire("") == b"\x00"
    with pytest.raises(ValueError):
        wire.name_to_wire("a" * 64 + ".test")
    assert wire.txt_rdata("x" * 300)[0] == 255 and wire.txt_rdata("x" * 300)[256] == 45
    assert wire.txt_rdata("") == b"\x00" and wire.txt_rdata("é") == b"\x02\xc3\xa9"
    assert wire.txt_rdata("x" * 255) == b"\xff" + b"x" * 255
    assert wire.txt_rdata("x" * 256) == b"\xff" + b"x" * 255 + b"\x01x"


# ------------------------------------------------------------------ responder


def ask(responder: Responder, name: str, rdtype: str, **kw: object) -> dns.message.Message:
    m = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    raw = responder.handle(m.to_wire())
    assert raw is not None
    r = dns.message.from_wire(raw)
    assert r.id == m.id
    return r


def test_answers_are_parseable_by_dnspython_and_dnslib(responder: Responder) -> None:
    for name, rdtype in ((ZONE, "SOA"), (ZONE, "NS"), ("alice." + ZONE, "A"),
                         ("_acme-challenge.shop.example.org", "TXT"), ("x." + ZONE, "MX"),
                         ("shop.example.org", "AAAA"), ("elsewhere.org", "A")):
        m = dns.message.make_query(name, rdtype)
        raw = responder.handle(m.to_wire())
        assert raw is not None
        dnslib.DNSRecord.parse(raw)
        dns.message.from_wire(raw)


def test_negative_answers_carry_the_current_serial() -> None:
    view = ZoneView(zone_config())
    view.load(snapshot(serial=10))
    r = Responder(view)
    assert ask(r, "nx." + ZONE, "A").authority[0][0].serial == 10
    view.bump(11)  # the cached packed answer must not outlive the serial
    assert ask(r, "nx." + ZONE, "A").authority[0][0].serial == 11
    assert ask(r, ZONE, "SOA").answer[0][0].serial == 11


def test_truncate_keeps_question(responder: Responder) -> None:
    view = responder.view
    view._set_txt("big." + ZONE, [f"{i}" + "y" * 200 for i in range(5)])
    view.gen += 1
    r = ask(responder, "Big." + ZONE, "TXT", use_edns=False)
    assert r.flags & dns.flags.TC and not r.answer
    assert r.question[0].name.to_text() == "Big." + ZONE + "."


def _query(name: str, rdtype: str | int, msg_id: int, **kw: object) -> bytes:
    m = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    m.id = msg_id
    return m.to_wire()


def test_0x20_case_hits_the_cache_and_echoes_its_own_case() -> None:
    """Resolvers randomize the letter case of every query (0x20): the second asking, in
    another case, must come from the reply cache with the same answer and its own case."""
    view = ZoneView(zone_config())
    view.load(snapshot())
    r = Responder(view)
    first = r.handle(_query(f"alice.{ZONE}", "A", 1, use_edns=0))
    assert first is not None
    for i, name in enumerate((f"AlIcE.{ZONE.upper()}", f"aLiCe.{ZONE}", f"ALICE.{ZONE}")):
        raw = r.handle(_query(name, "A", 100 + i, use_edns=0))
        assert raw is not None
        reply = dns.message.from_wire(raw)
        assert reply.id == 100 + i
        assert reply.question[0].name.to_text() == name + "."  # the case as asked
        assert raw[2:12] == first[2:12] and raw[len(raw) - 27 :] == first[len(first) - 27 :]
        assert [rr.address for rr in reply.answer[0]] == ["192.0.2.1"]
    assert r.hits == 3


def test_folded_bytes_after_the_name_never_share_a_cache_entry() -> None:
    """``bytes.lower`` folds 0x41 to 0x61 anywhere: HTTPS (65 = 0x0041) and type 97 share a
    lower-cased key, and a UDP size of 0x0241 folds to 0x0261; each must get its own reply."""
    view = ZoneView(zone_config())
    view.load(snapshot())
    view._set_txt("big." + ZONE, ["y" * 250, "z" * 250, "w" * 10])  # a 589-octet reply
    view.gen += 1
    r = Responder(view)
    other = r.handle(_query(f"alice.{ZONE}", 97, 1))
    https = r.handle(_query(f"alice.{ZONE}", "HTTPS", 2))
    assert other is not None and https is not None
    assert dns.message.from_wire(https).question[0].rdtype == 65
    assert r.hits == 0
    small = r.handle(_query("big." + ZONE, "TXT", 3, use_edns=0, payload=0x0241))
    big = r.handle(_query("big." + ZONE, "TXT", 4, use_edns=0, payload=0x0261))
    assert small is not None and big is not None
    assert r.hits == 0
    assert len(big) > len(small)  # 577 truncates, 609 does not
    assert dns.message.from_wire(small).flags & dns.flags.TC


def test_do_and_cookie_variants_answer_as_plain_edns() -> None:
    """DO=1 and a client cookie (RFC 7873, option 10) get the same records; DO is echoed;
    the cookie is ignored as by a server without cookies; DO=0 answers are unchanged."""
    view = ZoneView(zone_config())
    view.load(snapshot())
    r = Responder(view)
    cookie = dns.edns.GenericOption(10, bytes.fromhex("0123456789abcdef"))
    server_cookie = dns.edns.GenericOption(10, bytes.fromhex("0123456789abcdef" + "11" * 16))
    plain = r.handle(_query(f"alice.{ZONE}", "A", 9, use_edns=0))
    assert plain is not None
    for kw in ({"want_dnssec": True}, {"options": [cookie]}, {"options": [server_cookie]},
               {"want_dnssec": True, "options": [cookie]}):
        raw = r.handle(_query(f"ALICE.{ZONE}", "A", 9, use_edns=0, **kw))
        assert raw is not None
        reply = dns.message.from_wire(raw)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.options
        assert [rr.address for rr in reply.answer[0]] == ["192.0.2.1"]
        assert bool(reply.ednsflags & dns.flags.DO) == bool(kw.get("want_dnssec"))
        if not kw.get("want_dnssec"):
            assert raw[12:].lower() == plain[12:]  # DO=0: the plain answer, byte for byte
    again = r.handle(_query(f"alice.{ZONE}", "A", 9, use_edns=0))
    assert again == plain


# ------------------------------------------------------------------ hostile input


def check_reply(packet: bytes, reply: bytes | None) -> None:
    if reply is None:
        assert len(packet) < 12 or packet[2] & 0x80  # only runts and responses are ignored
        return
    assert reply[:2] == packet[:2] and reply[2] & 0x80
    assert len(reply) >= 12


def test_corpus_of_100k_hostile_packets(responder: Responder) -> None:
    rnd = random.Random(20261128)
    starts = seeds()
    handled = 0
    t0 = time.process_time()
    for i in range(105_000):
        r = i % 10
        if r < 7:
            packet = mutate(rnd, rnd.choice(starts))
        elif r < 9:
            packet = pointer_packet(rnd)
        else:
            packet = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 64)))
        check_reply(packet, responder.handle(packet))
        check_reply(packet, responder.handle(packet, tcp=True))
        handled += 1
    assert handled >= 100_000
    assert responder.slow > 10_000  # the corpus really exercised the guarded path
    print(f"corpus: {handled} packets in {time.process_time() - t0:.1f} s CPU")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=700))
def test_any_bytes_never_raise(packet: bytes) -> None:
    view = _VIEW
    check_reply(packet, Responder(view).handle(packet))


_LABEL = st.binary(min_size=1, max_size=20).filter(lambda b: b"." not in b)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_LABEL, min_size=0, max_size=6), st.integers(0, 65535),
       st.sampled_from([False, 0]), st.integers(0, 65535))
def test_valid_queries_echo_question_bytes(labels: list[bytes], qtype: int,
                                           edns: int | bool, msg_id: int) -> None:
    """Any well-formed question: the reply carries the question byte for byte (0x20)."""
    qname = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    if len(qname) > 255:
        return
    packet = struct.pack(">HHHHHH", msg_id, 0x0100, 1, 0, 0, 0 if edns is False else 1)
    packet += qname + struct.pack(">HH", qtype, 1)
    if edns is not False:
        packet += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    reply = Responder(_VIEW).handle(packet)
    assert reply is not None and reply[:2] == packet[:2]
    rcode = reply[3] & 0xF
    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED):
        assert reply[12 : 12 + len(qname) + 4] == qname + struct.pack(">HH", qtype, 1)
    else:  # a meta type we do not implement, never anything else
        assert rcode == dns.rcode.NOTIMP and qtype in (41, 253, 254)


_VIEW = ZoneView(zone_config())
_VIEW.load(snapshot())


def test_hot_path_never_calls_dnslib(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> None:
        raise AssertionError("dnslib on the hot path")

    r = Responder(_VIEW)
    monkeypatch.setattr(dnslib.DNSRecord, "parse", boom)
    for name, rdtype in (("alice.gw.test", "A"), ("NX.gw.test", "A"), ("gw.test", "SOA"),
                         ("_acme-challenge.shop.example.org", "TXT"), ("other.org", "A")):
        for edns in (False, 0):
            m = dns.message.make_query(name, rdtype, use_edns=edns)
            for tcp in (False, True):
                raw = r.handle(m.to_wire(), tcp=tcp)
                assert raw is not None and dns.message.from_wire(raw).id == m.id
    assert r.slow == 0
