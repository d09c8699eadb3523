"""CSK rollover driven by a fast clock, checked the way a validating resolver sees it.

The simulation runs every phase on an injected clock (no sleeps) and, at each moment,
checks every combination a resolver may hold by the RFC 7583 timings: a DS set the parent
served within the DS TTL (any parent server, lagging up to DprpP), a DNSKEY RRset our
servers served within its TTL (any gateway, lagging up to Dprp), and an answer served
within its TTL. Each combination must validate with dnspython's validator. Two broken
timings show the check can fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnsd.responder import Responder
from dnsd.zone import ZoneView
from tests.dnssec_check import validate_section
from tests.dnszone import ZONE, snapshot, zone_config
from webgateway import keyroll, zonekeys
from webgateway.config import ConfigError, DnssecConfig, parse_config
from webgateway.model import ChangeSet, Snapshot

T0 = 1_800_000_000.0
ORIGIN = dns.name.from_text(ZONE)
TTL, NEG_TTL = 300, 30
TIMING = keyroll.Timing(propagation=60, ttl_key=TTL, ttl_sig=TTL, parent_propagation=120,
                        ttl_ds=600)
QUESTIONS = ((ZONE, "SOA"), (f"alice.{ZONE}", "A"), (f"nope.{ZONE}", "A"), (ZONE, "TXT"))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def ask(r: Responder, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0)
    raw = r.handle(q.to_wire(), tcp=True)
    assert raw is not None
    return dns.message.from_wire(raw)


@dataclass
class Served:
    """What one zone state answered: the DNSKEY message and one message per question."""

    since: float
    keys: dns.message.Message
    answers: list[dns.message.Message]


@dataclass
class World:
    """Our zone (one view, as the feed moves it), the parent, and their histories."""

    timing: keyroll.Timing
    clock: Clock = field(default_factory=Clock)
    keys: list[zonekeys.ZoneKey] = field(default_factory=list)
    zone_states: list[Served] = field(default_factory=list)
    parent_states: list[tuple[float, frozenset[bytes]]] = field(default_factory=list)
    parent_lag: float = 120  # real DprpP of the parent (all its servers have it after this)
    parent_ttl: float = 600  # real TTLds

    def __post_init__(self) -> None:
        self.view = ZoneView(zone_config(ttl=TTL, negative_ttl=NEG_TTL), None,
                             DnssecConfig(enabled=True), self.clock)
        self.responder = Responder(self.view)
        self.keys = [zonekeys.first_key(T0 - 86400)]
        self.view.private_keys.update(zonekeys.privates(self.keys))
        snap = snapshot()
        self.view.load(Snapshot(snap.serial, snap.names, snap.domains, snap.txt, {},
                                meta={zonekeys.META_KEY: zonekeys.dump(self.keys)}))
        self._record()
        apex = dns.name.from_text(ZONE).to_digestable()
        self.parent_states.append((-1e12, frozenset({self.keys[0].ds(apex)})))

    def _record(self) -> None:
        self.zone_states.append(Served(
            self.clock.now, ask(self.responder, ZONE, "DNSKEY"),
            [ask(self.responder, n, t) for n, t in QUESTIONS]))

    def store(self, keys: list[zonekeys.ZoneKey]) -> None:
        """What the store's feed does: the new key list reaches the view."""
        if keys is self.keys:
            return
        self.keys = keys
        self.view.private_keys.update(zonekeys.privates(keys))  # as dnsd's shell opens them
        self.view.apply(ChangeSet(self.view.serial + 1, {}, {}, {}, {},
                                  meta={zonekeys.META_KEY: zonekeys.dump(keys)}))
        self._record()

    def parent_follows_cds(self) -> None:
        """A parent that scans CDS (RFC 7344) and replaces its DS set with it."""
        m = ask(self.responder, ZONE, "CDS")
        cds = frozenset(rd.to_wire() for rr in m.answer if rr.rdtype == dns.rdatatype.CDS
                        for rd in rr)
        if cds and cds != self.parent_states[-1][1]:
            self.parent_states.append((self.clock.now, cds))

    def parent_everywhere(self, ds: bytes) -> bool:
        t, dss = self.parent_states[-1]
        return ds in dss and self.clock.now >= t + self.parent_lag

    # ------------------------------------------------------------------ what resolvers hold
    def _zone_in(self, lo: float, hi: float) -> list[Served]:
        """Zone states any of our servers may have answered with between lo and hi."""
        out = []
        for i, s in enumerate(self.zone_states):
            end = self.zone_states[i + 1].since + self.timing.propagation if (
                i + 1 < len(self.zone_states)) else float("inf")
            if s.since <= hi and end >= lo:
                out.append(s)
        return out

    def _parent_in(self, lo: float, hi: float) -> list[frozenset[bytes]]:
        out = []
        for i, (since, dss) in enumerate(self.parent_states):
            end = self.parent_states[i + 1][0] + self.parent_lag if (
                i + 1 < len(self.parent_states)) else float("inf")
            if since <= hi and end >= lo:
                out.append(dss)
        return out

    def failures(self) -> list[str]:
        """Every combination a resolver may hold now that does not validate."""
        now = self.clock.now
        bad = []
        for ds_set in self._parent_in(now - self.parent_ttl, now):
            for keys_from in self._zone_in(now - TTL, now):
                trusted = _trusted_keys(keys_from.keys, ds_set, now)
                if trusted is None:
                    bad.append(f"DNSKEY of {keys_from.since - T0:+.0f}s vs DS"
                               f" {sorted(d[:2].hex() for d in ds_set)}")
                    continue
                for data_from in self._zone_in(now - TTL, now):
                    for (name, rdtype), m in zip(QUESTIONS, data_from.answers, strict=True):
                        try:
                            _validate_all(m, trusted, now)
                        except dns.exception.ValidationFailure as e:
                            bad.append(f"{name} {rdtype} of {data_from.since - T0:+.0f}s with"
                                       f" DNSKEY of {keys_from.since - T0:+.0f}s: {e}")
        return bad


def _trusted_keys(m: dns.message.Message, ds_set: frozenset[bytes],
                  now: float) -> dict[dns.name.Name, dns.rrset.RRset] | None:
    """The DNSKEY RRset when a key named by the DS set signs it (RFC 4035 5.2)."""
    keyset = m.find_rrset(m.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    sigs = m.find_rrset(m.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                        dns.rdatatype.DNSKEY)
    anchors = dns.rrset.RRset(ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for k in keyset:
        if dns.dnssec.make_ds(ORIGIN, k, "SHA256").to_wire() in ds_set:
            anchors.add(k)
    if not anchors:
        return None
    try:
        dns.dnssec.validate(keyset, sigs, {ORIGIN: anchors}, now=now)
    except dns.exception.ValidationFailure:
        return None
    return {ORIGIN: keyset}


def _validate_all(m: dns.message.Message, keys: dict[dns.name.Name, dns.rrset.RRset],
                  now: float) -> None:
    assert validate_section(m.answer, keys, now) + validate_section(m.authority, keys, now)


def run_roll(world: World, end: float = 4 * 3600, step: float = 10) -> list[str]:
    """Start a roll at T0 + 100 s and run dnsd's minute tick, the parent's CDS scan and
    the DS poll until ``end``; every failure seen on the way."""
    failures: list[str] = []
    t = 0.0
    while t <= end:
        world.clock.now = T0 + t
        if t == 100:
            world.store(keyroll.start(world.keys, world.clock.now,
                                      zonekeys.generate(world.clock.now)))
        if t % 60 == 0:
            world.store(keyroll.advance(world.keys, world.clock.now, world.timing))
            roll = keyroll.rolling(world.keys)
            if roll is not None and roll[1].ready is not None and roll[1].ds_seen is None \
                    and world.parent_everywhere(roll[1].ds(ORIGIN.to_digestable())):
                world.store(keyroll.confirm_ds(world.keys, world.clock.now))
        world.parent_follows_cds()
        failures += [f"at {t:+.0f}s: {f}" for f in world.failures()]
        t += step
    return failures


def test_a_csk_roll_validates_at_every_moment_and_ends_with_one_key() -> None:
    world = World(TIMING)
    assert run_roll(world) == []
    old, new = world.keys
    assert old.retired is not None and old.removed is not None and old.private is None
    assert new.in_zone and new.ds_seen is not None
    assert keyroll.rolling(world.keys) is None
    # RFC 7583 order and intervals, as the fast clock took them (the tick is a minute)
    assert new.published == T0 + 100
    assert new.published + TIMING.ipub <= new.ready < new.published + TIMING.ipub + 60
    assert new.ds_seen is not None and new.ready < new.ds_seen
    assert new.ds_seen + TIMING.iret_ds <= old.retired < new.ds_seen + TIMING.iret_ds + 60
    assert old.retired + TIMING.iret <= old.removed < old.retired + TIMING.iret + 60
    # the parent's DS moved only once the successor was ready
    (t_change, dss), = world.parent_states[1:]
    assert t_change >= new.ready and dss == {new.ds(ORIGIN.to_digestable())}
    # the zone ends as it began: one DNSKEY, one RRSIG per RRset
    m = world.zone_states[-1].keys
    assert len(m.answer[0]) == 1 and [rr.rdtype for rr in m.answer].count(
        dns.rdatatype.RRSIG) == 1


def test_retiring_before_the_parents_ds_ttl_runs_out_fails_validation() -> None:
    """The check can fail: a timing that ignores the parent's DS TTL breaks resolvers
    still holding the old DS."""
    world = World(replace(TIMING, ttl_ds=0, parent_propagation=0))
    failures = run_roll(world)
    assert failures and any("vs DS" in f for f in failures)


def test_naming_the_successor_before_caches_hold_it_fails_validation() -> None:
    """The check can fail: CDS naming the new key at once (no Ipub) lets the parent
    switch while resolvers still hold a DNSKEY set without it."""
    world = World(replace(TIMING, propagation=0, ttl_key=0, ttl_sig=0))
    failures = run_roll(world)
    assert failures and any("vs DS" in f for f in failures)


def test_advance_is_idempotent_and_a_second_start_is_refused() -> None:
    keys = [zonekeys.first_key(T0)]
    assert keyroll.advance(keys, T0 + 10, TIMING) is keys
    rolled = keyroll.start(keys, T0, zonekeys.generate(T0))
    with pytest.raises(keyroll.RolloverError, match="already under way"):
        keyroll.start(rolled, T0, zonekeys.generate(T0))
    with pytest.raises(keyroll.RolloverError, match="not ready yet"):
        keyroll.confirm_ds(rolled, T0 + 1)
    ready = keyroll.advance(rolled, T0 + TIMING.ipub, TIMING)
    assert ready is not rolled and keyroll.advance(ready, T0 + TIMING.ipub + 5, TIMING) is ready
    seen = keyroll.confirm_ds(ready, T0 + TIMING.ipub + 10)
    assert keyroll.confirm_ds(seen, T0 + TIMING.ipub + 20) is seen


def test_a_scheduled_roll_starts_after_the_lifetime() -> None:
    timing = replace(TIMING, lifetime=86400)
    keys = [zonekeys.first_key(T0)]
    assert keyroll.advance(keys, T0 + 86399, timing) is keys
    rolled = keyroll.advance(keys, T0 + 86400, timing)
    assert keyroll.rolling(rolled) is not None
    assert "scheduled rollover starts" in keyroll.next_step(keys, T0, timing)


def test_stored_phases_survive_a_round_trip_without_any_private_key() -> None:
    keys = [zonekeys.first_key(T0)]
    keys = keyroll.start(keys, T0 + 1, zonekeys.generate(T0 + 1))
    keys = keyroll.confirm_ds(keyroll.advance(keys, T0 + 1e4, TIMING), T0 + 2e4)
    keys = keyroll.advance(keyroll.advance(keys, T0 + 3e4, TIMING), T0 + 4e4, TIMING)
    text = zonekeys.dump(keys)
    loaded = zonekeys.load(text)
    assert [replace(k, private=None) for k in loaded] == [replace(k, private=None) for k in keys]
    assert all(k.private is None for k in loaded)  # sealed in the secrets, not in meta
    assert keys[1].private is not None and "PRIVATE" not in text
    scalar = keys[1].private.private_numbers().private_value
    assert f"{scalar:x}" not in text and str(scalar) not in text
    lines = keyroll.status_lines(keys, T0 + 4e4, TIMING)
    assert any(line.startswith(f"{keys[0].tag:<6} removed") for line in lines)


def test_a_stored_list_with_no_key_in_the_zone_is_refused() -> None:
    k = replace(zonekeys.first_key(T0), retired=T0 + 1)
    with pytest.raises(zonekeys.KeyMaterialError, match="no key in the zone"):
        zonekeys.load(zonekeys.dump([k]))


@pytest.mark.parametrize("value,why", [("2h", "at least 1d"), ("-1", "between"),
                                       ("soon", "not a duration")])
def test_bad_csk_lifetime_stops_start_up(value: str, why: str) -> None:
    raw = {"zone": {"name": ZONE, "gateway_ipv4": ["192.0.2.1"],
                    "nameservers": {f"ns1.{ZONE}": ["192.0.2.53"]}},
           "dnssec": {"enabled": True, "csk_lifetime": value}}
    with pytest.raises(ConfigError, match=why) as e:
        parse_config(raw, Path("/tmp"))
    assert e.value.key == "dnssec.csk_lifetime"



