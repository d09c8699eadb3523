"""Which servers must serve the TXT, and whether a custom domain points at us."""

from __future__ import annotations

from pathlib import Path

from certd.dnscheck import DomainLookup, authoritative_targets, judge_domain
from tests.support import make_config

GW = ["127.0.0.1", "::1"]


def test_loopback_glue_means_our_listen_addresses(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dns={"listen": ["127.0.0.1:15353", "[::1]:15353"]})
    targets, unresolved = authoritative_targets(cfg)
    assert targets == sorted([("127.0.0.1", 15353), ("::1", 15353)])
    assert unresolved == []


def test_public_glue_is_queried_on_53_and_wildcard_listen(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, zone={"nameservers": {
        "ns1.gw.test": ["203.0.113.10"], "ns2.gw.test": ["2001:db8::10", "127.0.0.1"],
        "ns.other.example": []}}, dns={"listen": ["0.0.0.0:5300"]})
    targets, unresolved = authoritative_targets(cfg)
    assert targets == sorted([("203.0.113.10", 53), ("2001:db8::10", 53), ("127.0.0.1", 5300)])
    assert unresolved == ["ns.other.example"]


def test_a_listed_secondary_is_asked_on_its_port_in_dns_secondaries(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, zone={"nameservers": {
        "ns1.gw.test": ["127.0.0.1"], "ns2.gw.test": ["127.0.0.31"],
        "ns3.gw.test": ["192.0.2.53"]}},
        dns={"listen": ["127.0.0.30:5300"], "secondaries": ["127.0.0.31:5301", "192.0.2.53:53"],
             "tsig": {"name": "k", "secret": "A" * 44}})
    targets, _ = authoritative_targets(cfg)
    assert targets == sorted([("127.0.0.30", 5300), ("127.0.0.31", 5301), ("192.0.2.53", 53)])


def lk(chal: str | None, chain: tuple[str, ...] = (), addrs: frozenset[str] = frozenset()
       ) -> DomainLookup:
    return DomainLookup(chal, chain, addrs)


def test_domain_with_both_cnames_is_ok() -> None:
    ok, detail = judge_domain("shop.example.org", "shop", "d123", "gw.test", GW,
                              lk("d123._acme.gw.test", ("shop.gw.test",), frozenset({"1.2.3.4"})))
    assert ok and "shop.gw.test" in detail


def test_missing_challenge_cname_says_what_to_create() -> None:
    ok, detail = judge_domain("shop.example.org", "shop", "d123", "gw.test", GW,
                              lk(None, ("shop.gw.test",)))
    assert not ok
    assert "_acme-challenge.shop.example.org -> d123._acme.gw.test" in detail


def test_wrong_challenge_target() -> None:
    ok, detail = judge_domain("shop.example.org", "shop", "d123", "gw.test", GW,
                              lk("d999._acme.gw.test", ("shop.gw.test",)))
    assert not ok and "d999._acme.gw.test" in detail


def test_apex_with_gateway_addresses_is_ok_others_are_not() -> None:
    ok, _ = judge_domain("example.org", "shop", "d1", "gw.test", GW,
                         lk("d1._acme.gw.test", (), frozenset({"127.0.0.1"})))
    assert ok
    ok, detail = judge_domain("example.org", "shop", "d1", "gw.test", GW,
                              lk("d1._acme.gw.test", (), frozenset({"127.0.0.1", "9.9.9.9"})))
    assert not ok and "CNAME example.org -> shop.gw.test" in detail
    ok, detail = judge_domain("example.org", "shop", "d1", "gw.test", GW,
                              lk("d1._acme.gw.test", ("elsewhere.net",)))
    assert not ok and "elsewhere.net" in detail
