"""Response rate limiting: token buckets per source network, slip and drop, bounded table."""

from __future__ import annotations

import dns.flags
import dns.message
import pytest

from dnsd.responder import slip
from dnsd.rrl import ANSWER, DROP, SLIP, RateLimiter, prefix
from tests.dnszone import ZONE


def verdicts(rl: RateLimiter, host: str, n: int, now: float) -> list[int]:
    return [rl.check(host, now) for _ in range(n)]


def test_a_burst_gets_the_rate_then_every_slipth_is_slipped() -> None:
    rl = RateLimiter(rate=5, slip=2, size=1024)
    got = verdicts(rl, "198.51.100.7", 11, now=100.0)
    assert got == [ANSWER] * 5 + [DROP, SLIP, DROP, SLIP, DROP, SLIP]
    assert (rl.limited, rl.slipped) == (6, 3)


def test_tokens_come_back_at_the_rate_and_never_beyond_one_second() -> None:
    rl = RateLimiter(rate=10, slip=0, size=1024)
    assert verdicts(rl, "198.51.100.7", 10, now=0.0) == [ANSWER] * 10
    assert rl.check("198.51.100.7", 0.0) == DROP
    assert verdicts(rl, "198.51.100.7", 3, now=0.35) == [ANSWER, ANSWER, ANSWER]
    assert rl.check("198.51.100.7", 0.35) == DROP
    # an hour idle refills one second's worth, not 36,000 queries
    assert verdicts(rl, "198.51.100.7", 11, now=3600.0).count(ANSWER) == 10


def test_one_network_is_one_bucket_and_others_are_untouched() -> None:
    rl = RateLimiter(rate=3, slip=0, size=1 << 16)
    assert verdicts(rl, "198.51.100.1", 3, 1.0) == [ANSWER] * 3
    assert rl.check("198.51.100.200", 1.0) == DROP  # the same /24
    assert rl.check("198.51.101.1", 1.0) == ANSWER  # the next /24
    assert verdicts(rl, "2001:db8:0:100::1", 3, 1.0) == [ANSWER] * 3
    assert rl.check("2001:db8:0:1ff::2", 1.0) == DROP  # the same /56
    assert rl.check("2001:db8:0:200::1", 1.0) == ANSWER  # the next /56


def test_prefixes() -> None:
    assert prefix("192.0.2.55") == "192.0.2"
    assert prefix("::ffff:192.0.2.55") == "::ffff:192.0.2"
    assert prefix("fe80::1%eth0") == bytes.fromhex("fe800000000000")
    assert prefix("not an address:") == "not an address:"


def test_memory_is_the_table_whatever_the_sources() -> None:
    """A spoofed flood from 200,000 networks neither grows the table nor raises."""
    rl = RateLimiter(rate=1, slip=2, size=4096)
    for i in range(200_000):
        rl.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 5.0)
        rl.check(f"2001:db8:{i:x}::1", 5.0)
    assert len(rl._tokens) == len(rl._stamp) == 4096
    assert rl.limited > 0


def test_bad_parameters_are_refused() -> None:
    for kw in ({"rate": 0}, {"rate": 5, "slip": -1}, {"rate": 5, "size": 0}):
        with pytest.raises(ValueError):
            RateLimiter(**kw)  # type: ignore[arg-type]


def test_slip_reply_is_tc_with_the_question_only() -> None:
    q = dns.message.make_query(f"AlIcE.{ZONE}", "A", use_edns=0, want_dnssec=True)
    q.flags |= dns.flags.CD
    raw = slip(q.to_wire())
    assert raw is not None
    r = dns.message.from_wire(raw)
    assert r.id == q.id and r.flags & dns.flags.TC and r.flags & dns.flags.QR
    assert r.flags & dns.flags.RD and r.flags & dns.flags.CD
    assert not r.answer and not r.authority
    assert r.question[0].name.to_text() == f"AlIcE.{ZONE}."
    assert r.ednsflags & dns.flags.DO
    plain = slip(dns.message.make_query(f"alice.{ZONE}", "A").to_wire())
    assert plain is not None and dns.message.from_wire(plain).edns < 0
    for junk in (b"", b"\x00" * 11, b"\x12\x34\x80" + b"\x00" * 20, bytes(range(40))):
        assert slip(junk) is None
