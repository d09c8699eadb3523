"""Signed answers, checked by dnspython's validator against the DNSKEY we publish (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnsd import wire
from dnsd.responder import Responder
from dnsd.signer import NXNAME, Signer, type_bitmap
from dnsd.zone import ZoneView
from tests.dnszone import ZONE, snapshot, zone_config
from tests.support import fixed_label as challenge_label
from webgateway import zonekeys
from webgateway.config import ConfigError, DnssecConfig, parse_config
from webgateway.model import ChangeSet, Snapshot

NOW = 1_800_000_000.0
KEY_LIST = [zonekeys.generate(NOW - 86400)]
KEYS = zonekeys.dump(KEY_LIST)
SHOP = "shop.example.org"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def signed_view(clock: Clock | None = None, **zone: object) -> ZoneView:
    view = ZoneView(zone_config(caa_issuers=("letsencrypt.org",), **zone), None,
                    DnssecConfig(enabled=True), clock or Clock())
    view.private_keys.update(zonekeys.privates(KEY_LIST))
    snap = snapshot()
    view.load(Snapshot(snap.serial, snap.names, snap.domains, snap.txt, {},
                       meta={zonekeys.META_KEY: KEYS}))
    return view


def ask(r: Responder, name: str, rdtype: str, do: bool = True) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=do, use_edns=0)
    q.id = 4242
    raw = r.handle(q.to_wire(), tcp=True)
    assert raw is not None
    return dns.message.from_wire(raw)


def dnskeys(r: Responder, zone: str = ZONE) -> dict[dns.name.Name, dns.rrset.RRset]:
    m = ask(r, zone, "DNSKEY")
    keyset = m.find_rrset(m.answer, dns.name.from_text(zone), dns.rdataclass.IN,
                          dns.rdatatype.DNSKEY)
    sig = m.find_rrset(m.answer, dns.name.from_text(zone), dns.rdataclass.IN,
                       dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
    dns.dnssec.validate(keyset, sig, {keyset.name: keyset}, now=NOW)  # self-signed
    return {keyset.name: keyset}


def validate_all(m: dns.message.Message, keys: dict[dns.name.Name, dns.rrset.RRset],
                 now: float = NOW) -> int:
    """Every RRset of every section has a valid RRSIG; returns how many were checked."""
    checked = 0
    for section in (m.answer, m.authority, m.additional):
        sigs = {(s.name, s.covers): s for s in section if s.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.OPT):
                continue
            sig = sigs.get((rrset.name, rrset.rdtype))
            assert sig is not None, f"no RRSIG for {rrset}"
            dns.dnssec.validate(rrset, sig, keys, now=now)
            checked += 1
    return checked


def nsec(m: dns.message.Message) -> dns.rrset.RRset:
    found = [s for s in m.authority if s.rdtype == dns.rdatatype.NSEC]
    assert len(found) == 1, m
    return found[0]


def test_dnskey_cds_cdnskey_at_the_apex_and_ds_matches_dnspython() -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    keyset = keys[dns.name.from_text(ZONE)]
    (key,) = keyset
    assert key.algorithm == 13 and key.flags == 257
    ours = zonekeys.load(KEYS)[0].ds(wire.name_to_wire(ZONE))
    ref = dns.dnssec.make_ds(ZONE + ".", key, "SHA256")
    assert ours == ref.to_wire()
    m = ask(r, ZONE, "CDS")
    assert [rd.to_wire() for rd in m.answer[0]] == [ours]
    assert validate_all(m, keys) == 1
    m = ask(r, ZONE, "CDNSKEY")
    assert validate_all(m, keys) == 1 and m.answer[0][0].key == key.key


@pytest.mark.parametrize("name,rdtype", [
    (ZONE, "SOA"), (ZONE, "NS"), (ZONE, "A"), (ZONE, "CAA"), (f"alice.{ZONE}", "A"),
    (f"alice.{ZONE}", "AAAA"), (f"_acme-challenge.{ZONE}", "TXT"), (f"ns1.{ZONE}", "A"),
    (f"{challenge_label(SHOP)}._acme.{ZONE}", "TXT"), (f"aLiCe.{ZONE}", "A"), (ZONE, "ANY"),
])
def test_positive_answers_validate(name: str, rdtype: str) -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    m = ask(r, name, rdtype)
    assert m.rcode() == dns.rcode.NOERROR and m.answer
    assert m.flags & dns.flags.AA and m.ednsflags & dns.flags.DO
    assert validate_all(m, keys) >= 1
    if rdtype == "NS":  # the glue is ours and signed too
        assert any(s.rdtype == dns.rdatatype.A for s in m.additional)


def test_custom_domain_cname_and_its_zone_validate() -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    keys.update(dnskeys(r, SHOP))  # the same key is published at the custom domain's apex
    m = ask(r, f"_acme-challenge.{SHOP}", "TXT")
    assert [s.rdtype for s in m.answer if s.rdtype != dns.rdatatype.RRSIG] == [
        dns.rdatatype.CNAME, dns.rdatatype.TXT]
    assert validate_all(m, keys) == 2
    m = ask(r, SHOP, "A")
    assert validate_all(m, keys) == 1


def test_nxdomain_is_compact_denial() -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    m = ask(r, f"nope.{ZONE}", "A")
    assert m.rcode() == dns.rcode.NOERROR and not m.answer  # RFC 9824: NOERROR
    assert validate_all(m, keys) == 2  # SOA and NSEC
    n = nsec(m)
    assert n.name == dns.name.from_text(f"nope.{ZONE}")
    assert n[0].next == dns.name.from_text(f"\\000.nope.{ZONE}")
    assert set(n[0].windows) == {(0, type_bitmap([46, 47, NXNAME])[2:])}
    # without DO the same question is a plain NXDOMAIN, no DNSSEC records
    plain = ask(r, f"nope.{ZONE}", "A", do=False)
    assert plain.rcode() == dns.rcode.NXDOMAIN
    assert not any(s.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC) for s in plain.authority)


@pytest.mark.parametrize("name,rdtype,present", [
    (f"alice.{ZONE}", "TXT", {"A", "AAAA"}),
    (ZONE, "TXT", {"SOA", "NS", "A", "AAAA", "CAA", "DNSKEY", "CDS", "CDNSKEY"}),
    (f"_acme.{ZONE}", "A", set()),  # an empty non-terminal
    (f"_acme-challenge.{ZONE}", "A", {"TXT"}),
])
def test_nodata_proves_the_types_present(name: str, rdtype: str, present: set[str]) -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    m = ask(r, name, rdtype)
    assert m.rcode() == dns.rcode.NOERROR and not m.answer
    assert validate_all(m, keys) == 2
    n = nsec(m)
    assert n.name == dns.name.from_text(name)
    types = set(n[0].to_text().split()[1:])
    assert types == present | {"RRSIG", "NSEC"}


def test_cname_to_a_missing_target_is_proven_at_the_target() -> None:
    view = signed_view()
    target = f"{challenge_label(SHOP)}._acme.{ZONE}"
    view.apply(ChangeSet(8, {}, {}, {target: ()}, {}))  # the TXT is gone; the target stays
    r = Responder(view)
    keys = dnskeys(r)
    keys.update(dnskeys(r, SHOP))
    m = ask(r, f"_acme-challenge.{SHOP}", "TXT")
    assert validate_all(m, keys) == 3  # CNAME, SOA, NSEC
    assert nsec(m).name == dns.name.from_text(target)


def test_a_change_is_signed_in_the_next_answer() -> None:
    view = signed_view()
    r = Responder(view)
    keys = dnskeys(r)
    name = f"_acme-challenge.new.{ZONE}"
    assert ask(r, name, "TXT").rcode() == dns.rcode.NOERROR
    view.apply(ChangeSet(8, {"new": None}, {}, {name: ("token-1",)}, {}))
    m = ask(r, name, "TXT")
    assert m.answer[0][0].strings == (b"token-1",)
    assert validate_all(m, keys) == 1
    soa = ask(r, ZONE, "SOA")
    assert soa.answer[0][0].serial == 8 and validate_all(soa, keys) == 1


def test_signatures_are_cached_and_refreshed_by_the_clock() -> None:
    clock = Clock()
    view = signed_view(clock)
    r = Responder(view)
    keys = dnskeys(r)
    assert view.signer is not None
    ask(r, f"alice.{ZONE}", "A")
    before = view.signer.signed
    view.bump(view.serial)  # caches of whole answers die; the RRSIG cache does not
    m = ask(r, f"alice.{ZONE}", "A")
    assert view.signer.signed == before
    sig = next(s for s in m.answer if s.rdtype == dns.rdatatype.RRSIG)[0]
    assert sig.inception == int(NOW) - 3600 and sig.expiration == int(NOW) + 14 * 86400
    clock.now = NOW + 7 * 86400 + 1  # under 7 days left: a fresh signature
    view.bump(view.serial)
    m = ask(r, f"alice.{ZONE}", "A")
    assert view.signer.signed == before + 1
    sig = next(s for s in m.answer if s.rdtype == dns.rdatatype.RRSIG)[0]
    assert sig.expiration == int(clock.now) + 14 * 86400
    assert validate_all(m, keys, now=clock.now) == 1


def test_do0_answers_are_the_unsigned_ones() -> None:
    plain = Responder(ZoneView(zone_config(caa_issuers=("letsencrypt.org",))))
    plain.view.load(snapshot())
    signed = Responder(signed_view())
    for name, rdtype in [(f"alice.{ZONE}", "A"), (ZONE, "SOA"), (f"nx.{ZONE}", "A"),
                         (f"_acme-challenge.{SHOP}", "TXT"), (ZONE, "NS")]:
        for edns in (False, True):
            q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
            q.id = 7
            assert signed.handle(q.to_wire()) == plain.handle(q.to_wire()), (name, rdtype)


def test_refused_outside_stays_unsigned() -> None:
    r = Responder(signed_view())
    m = ask(r, "example.net", "A")
    assert m.rcode() == dns.rcode.REFUSED and not m.answer and not m.authority


def test_unreadable_keys_keep_the_zone_unsigned_without_leaking() -> None:
    view = ZoneView(zone_config(), None, DnssecConfig(enabled=True), Clock())
    secret = "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----"
    bad = json.dumps({"keys": [{"algorithm": 13, "created": 1, "private_key": secret}]})
    with pytest.raises(zonekeys.KeyMaterialError) as e:
        zonekeys.load(bad)
    assert "not-a-key" not in str(e.value)
    view.load(Snapshot(1, {}, {}, {}, {}, meta={zonekeys.META_KEY: bad}))
    assert view.signer is None
    m = ask(Responder(view), ZONE, "SOA")
    assert m.rcode() == dns.rcode.NOERROR
    assert not any(s.rdtype == dns.rdatatype.RRSIG for s in m.answer)


def test_a_key_whose_private_half_was_not_opened_leaves_the_zone_unsigned(
        caplog: pytest.LogCaptureFixture) -> None:
    """Meta holds only public halves; a key list naming a key dnsd could not open (no
    secrets row, another key file) is not served half-signed: the previous keys stay."""
    view = ZoneView(zone_config(), None, DnssecConfig(enabled=True), Clock())
    view.load(Snapshot(1, {}, {}, {}, {}, meta={zonekeys.META_KEY: KEYS}))
    assert view.signer is None and "was not opened from the store" in caplog.text
    m = ask(Responder(view), ZONE, "DNSKEY")
    assert not m.answer and not any(s.rdtype == dns.rdatatype.RRSIG for s in m.authority)
    view.private_keys.update(zonekeys.privates(KEY_LIST))
    view.apply(ChangeSet(2, {}, {}, {}, {}, meta={zonekeys.META_KEY: KEYS}))
    assert view.signer is not None


def test_hostile_do_queries_get_answers_or_formerr() -> None:
    r = Responder(signed_view())
    q = dns.message.make_query(f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{ZONE}", "A", want_dnssec=True)
    raw = r.handle(q.to_wire())  # a long missing name over UDP: NSEC twice the name, fits?
    assert raw is not None
    m = dns.message.from_wire(raw)
    assert m.rcode() == dns.rcode.NOERROR
    assert m.flags & dns.flags.TC or len(raw) <= 1232
    for qtype in ("RRSIG", "NSEC", "DS", "TYPE65280"):
        assert ask(r, f"alice.{ZONE}", qtype).rcode() == dns.rcode.NOERROR


def test_config_dnssec_keys() -> None:
    base = {"zone": {"name": "gw.example.com", "gateway_ipv4": ["192.0.2.1"],
                     "nameservers": {"ns1.gw.example.com": ["192.0.2.53"]}}}
    cfg = parse_config({**base, "dnssec": {"enabled": True}}, Path("/tmp"))
    assert cfg.dnssec == DnssecConfig(True, 14 * 86400.0, 7 * 86400.0)
    with pytest.raises(ConfigError, match=r"dnssec.signature_refresh: must be at least 1h"):
        parse_config({**base, "dnssec": {"signature_validity": "2d", "signature_refresh": "2d"}},
                     Path("/tmp"))
    with pytest.raises(ConfigError, match=r"dnssec.enabled: expected true or false"):
        parse_config({**base, "dnssec": {"enabled": "yes"}}, Path("/tmp"))
    for bad in (10, -1, "lots", 10**9):
        with pytest.raises(ConfigError, match=r"dnssec.signature_cache: "):
            parse_config({**base, "dnssec": {"signature_cache": bad}}, Path("/tmp"))
    sized = parse_config({**base, "dnssec": {"enabled": True, "signature_cache": 2_100_000}},
                         Path("/tmp")).dnssec
    view = ZoneView(zone_config(), None, sized, Clock())
    view.private_keys.update(zonekeys.privates(KEY_LIST))
    view.load(Snapshot(1, {}, {}, {}, {}, meta={zonekeys.META_KEY: KEYS}))
    assert view.signer is not None and view.signer.cache_size == 2_100_000
    xfr = {"secondaries": ["192.0.2.9:53"], "tsig": {"name": "k", "secret": "a2V5" * 8}}
    signed_xfr = parse_config({**base, "dns": xfr, "dnssec": {"enabled": True}}, Path("/tmp"))
    assert signed_xfr.dnssec.enabled and signed_xfr.dns.secondaries  # transfers are signed
    with pytest.raises(ConfigError, match=r"dnssec.rollover: unknown key"):
        parse_config({**base, "dnssec": {"rollover": 1}}, Path("/tmp"))


def test_a_0x20_recased_do_query_hits_the_reply_cache_and_validates() -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    for name in (f"alice.{ZONE}", f"ALiCE.{ZONE}".upper(), f"nx.{ZONE}", f"Nx.{ZONE}"):
        q = dns.message.make_query(name, "A", want_dnssec=True, use_edns=0)
        raw = r.handle(q.to_wire())
        assert raw is not None
        m = dns.message.from_wire(raw)
        assert m.question[0].name.to_text() == name + "." and validate_all(m, keys) >= 1
    assert r.hits == 2


def test_a_missing_name_of_255_octets_gets_a_valid_nsec() -> None:
    r = Responder(signed_view())
    keys = dnskeys(r)
    # one label of 52 octets, then 3 of 63 and gw.test: 254 octets, \000.name would not fit
    name = ".".join(["b" * 51 + "?"] + ["a" * 63] * 3 + [ZONE])
    m = ask(r, name, "A")
    assert len(dns.name.from_text(name).to_wire()) == 254
    n = nsec(m)
    assert n[0].next == dns.name.from_text(name.replace("?", "@", 1))
    assert validate_all(m, keys) == 2
    upper = ask(r, name.replace("?", "@"), "A")  # '@' + 1 is 'A': skipped to '['
    assert nsec(upper)[0].next.labels[0].endswith(b"[")
    ff = ask(r, name.replace("?", "\\255"), "A")  # no successor: no NSEC, never a bad one
    assert not any(s.rdtype == dns.rdatatype.NSEC for s in ff.authority)


def test_a_full_signature_cache_keeps_the_rrsets_still_asked() -> None:
    """A hot RRset asked once per ``cache_size`` new ones keeps its signature across the
    cache filling up (a clear-all cache signed it again after every fill); memory stays
    bounded at two generations."""
    signer = Signer([zonekeys.first_key(NOW)], clock=lambda: NOW, cache_size=4)
    apex = wire.name_to_wire(ZONE)

    def sign(label: str) -> None:
        signer.rrsigs(wire.name_to_wire(f"{label}.{ZONE}"), wire.A, 300, (b"\x7f\x00\x00\x01",),
                      apex)

    sign("hot")
    for i in range(40):
        sign(f"cold{i}")
        if i % 3 == 2:
            sign("hot")
    assert signer.signed == 41  # the hot RRset was signed once, each cold one once
    assert len(signer._cache) + len(signer._old) <= 2 * 4
    sign("cold0")  # long gone: signed again
    assert signer.signed == 42
