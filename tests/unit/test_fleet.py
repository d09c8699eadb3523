"""The fleet registry's pure parts: who a gateway says it is, and how dnsd steers tunnel names.

A tunnel name is answered with the addresses of the gateways holding a live tunnel for it
(short TTL); with none, like any name. Applying gateway and presence changes one by one
gives the same answers as a fresh load of the same state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd.responder import Responder
from dnsd.zone import ZoneView
from tests.dnszone import ZONE, snapshot, zone_config
from tests.unit.test_dnsd_zone import answers
from webgateway.addresses import parse_hostport
from webgateway.config import ConfigError, parse_config
from webgateway.fleet import gateway_id, local_gateway, public_addresses, reachable
from webgateway.model import ChangeSet, Gateway, Name, Snapshot, merge

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
GWS = {
    "gw1": Gateway("gw1", (V4("198.51.100.1"),), (V6("2001:db8::a1"),)),
    "gw2": Gateway("gw2", (V4("198.51.100.2"),), ()),
    "gw3": Gateway("gw3", (), (V6("2001:db8::a3"),)),
}


def ask(view: ZoneView, name: str, rdtype: str = "A") -> dns.message.Message:
    m = dns.message.make_query(name, rdtype, use_edns=False)
    m.id = 1
    raw = Responder(view).handle(m.to_wire())
    assert raw is not None
    return dns.message.from_wire(raw)


def fleet_snapshot(serial: int = 7, held: dict[str, frozenset[str]] | None = None,
                   gateways: dict[str, Gateway] | None = None) -> Snapshot:
    base = snapshot(serial)
    names = {**base.names, "hidden": Name("hidden", 1, (), tunnel=True)}
    return replace(base, names=names, gateways=GWS if gateways is None else gateways,
                   tunnels=held or {})


def addresses(r: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in r.answer for rd in rrset}


def test_a_tunnel_name_is_answered_with_the_gateways_holding_it() -> None:
    view = ZoneView(zone_config(tunnel_ttl=7))
    view.load(fleet_snapshot(held={"hidden": frozenset({"gw2"})}))
    r = ask(view, f"hidden.{ZONE}")
    assert addresses(r) == {"198.51.100.2"} and r.answer[0].ttl == 7
    # gw2 has no IPv6: AAAA is NODATA there, not the whole fleet's address
    r6 = ask(view, f"hidden.{ZONE}", "AAAA")
    assert r6.rcode() == dns.rcode.NOERROR and not r6.answer
    # ordinary names keep the zone's addresses and TTL
    alice = ask(view, f"alice.{ZONE}")
    assert addresses(alice) == {"192.0.2.1"} and alice.answer[0].ttl == 300
    # a second gateway takes a tunnel too: both are answered
    view.apply(ChangeSet(8, {}, {}, {}, {}, tunnels={"hidden": frozenset({"gw1", "gw2"})}))
    assert addresses(ask(view, f"hidden.{ZONE}")) == {"198.51.100.1", "198.51.100.2"}
    assert addresses(ask(view, f"hidden.{ZONE}", "AAAA")) == {"2001:db8::a1"}
    # gw1 leaves the registry: its address goes with it
    view.apply(ChangeSet(9, {}, {}, {}, {}, gateways={"gw1": None}))
    assert addresses(ask(view, f"hidden.{ZONE}")) == {"198.51.100.2"}
    # no tunnel anywhere: answered as today (every gateway address), still the short TTL
    view.apply(ChangeSet(10, {}, {}, {}, {}, tunnels={"hidden": frozenset()}))
    r = ask(view, f"hidden.{ZONE}")
    assert addresses(r) == {"192.0.2.1"} and r.answer[0].ttl == 7
    # no longer a tunnel name: presence rows left over do not steer it
    view.apply(ChangeSet(11, {"hidden": Name("hidden", 1, ())}, {}, {}, {},
                         tunnels={"hidden": frozenset({"gw2"})}))
    r = ask(view, f"hidden.{ZONE}")
    assert addresses(r) == {"192.0.2.1"} and r.answer[0].ttl == 300


def test_presence_of_an_unknown_gateway_steers_nothing() -> None:
    """A presence row whose gateway is not (or no longer) registered adds no address."""
    view = ZoneView(zone_config())
    view.load(fleet_snapshot(held={"hidden": frozenset({"gone"})}))
    assert addresses(ask(view, f"hidden.{ZONE}")) == {"192.0.2.1"}


fleet_change = st.one_of(
    st.tuples(st.just("gateway"), st.sampled_from(sorted(GWS)), st.booleans()),
    st.tuples(st.just("tunnel"), st.sampled_from(["hidden", "alice", "nope"]),
              st.frozensets(st.sampled_from([*GWS, "gone"]), max_size=3)),
    st.tuples(st.just("name"), st.sampled_from(["hidden", "alice"]), st.booleans()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(fleet_change, min_size=1, max_size=10))
def test_incremental_fleet_changes_equal_a_fresh_load(steps: list[tuple[Any, ...]]) -> None:
    state = fleet_snapshot(serial=1, held={"hidden": frozenset({"gw1"})})
    view = ZoneView(zone_config())
    view.load(state)
    for serial, (kind, key, value) in enumerate(steps, start=2):
        if kind == "gateway":
            change = ChangeSet(serial, {}, {}, {}, {}, gateways={key: GWS[key] if value else None})
        elif kind == "tunnel":
            change = ChangeSet(serial, {}, {}, {}, {}, tunnels={key: value})
        else:
            change = ChangeSet(serial, {key: Name(key, 1, (), tunnel=value)}, {}, {}, {})
        names, gateways = dict(state.names), dict(state.gateways)
        merge(names, change.names)
        merge(gateways, change.gateways)
        tunnels = {k: v for k, v in {**state.tunnels, **change.tunnels}.items() if v}
        state = replace(state, serial=serial, names=names, gateways=gateways, tunnels=tunnels)
        view.apply(change)
        fresh = ZoneView(zone_config())
        fresh.load(state)
        for name in ("hidden", "alice"):
            for rdtype in ("A", "AAAA", "ANY"):
                got, want = ask(view, f"{name}.{ZONE}", rdtype), ask(fresh, f"{name}.{ZONE}",
                                                                      rdtype)
                assert got.to_text() == want.to_text(), steps
        assert answers(view) == answers(fresh), steps


def _config(tmp: Path, **sections: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {
        "zone": {"name": "gw.test", "gateway_ipv4": ["203.0.113.1", "203.0.113.2"],
                 "gateway_ipv6": ["2001:db8::1"],
                 "nameservers": {"ns1.gw.test": ["203.0.113.1"]}},
        "dns": {"listen": ["203.0.113.2:53"]},
        "proxy": {"https_listen": ["203.0.113.2:443", "[::]:443"]},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return parse_config(raw, tmp)


def test_who_a_gateway_says_it_is(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert gateway_id(cfg, "host-a") == "host-a/203.0.113.2:443"
    # its own public address: the zone's address the proxy listens on
    assert public_addresses(cfg) == ((V4("203.0.113.2"),), ())
    gw = local_gateway(cfg, ["dnsd", "proxy", "api"], 5.0, "host-a")
    assert gw.dns == (parse_hostport("203.0.113.2:53"),)
    assert gw.https == cfg.proxy.https_listen and gw.seen == gw.started == 5.0
    assert gw.api == "http://127.0.0.1:8000"
    assert local_gateway(cfg, ["dnsd"], 5.0).https == ()  # no proxy here: no HTTPS to check
    # explicit keys win
    cfg = _config(tmp_path, fleet={"id": "edge-1", "ipv4": ["198.51.100.9"]})
    assert gateway_id(cfg) == "edge-1" and public_addresses(cfg) == ((V4("198.51.100.9"),), ())
    # wildcard listeners only: every zone address (one gateway), reached on the public one
    cfg = _config(tmp_path, proxy={"https_listen": ["0.0.0.0:443"]})
    assert public_addresses(cfg) == ((V4("203.0.113.1"), V4("203.0.113.2")), (V6("2001:db8::1"),))
    assert str(reachable(parse_hostport("0.0.0.0:53"), [V6("2001:db8::1"), V4("203.0.113.7")])
               ) == "203.0.113.7:53"
    assert str(reachable(parse_hostport("[::]:53"), [V4("203.0.113.7")])) == "[::1]:53"


@pytest.mark.parametrize(("section", "bad", "key"), [
    ("fleet", {"id": "two words"}, "fleet.id"),
    ("fleet", {"id": "x" * 101}, "fleet.id"),
    ("fleet", {"ipv4": ["2001:db8::1"]}, "fleet.ipv4"),
    ("fleet", {"heartbeat": 0}, "fleet.heartbeat"),
    ("fleet", {"heartbeat": 10, "stale_after": 20}, "fleet.stale_after"),
    ("fleet", {"members": []}, "fleet.members"),
    ("zone", {"tunnel_ttl": 0}, "zone.tunnel_ttl"),
])
def test_bad_fleet_keys_stop_start_up(tmp_path: Path, section: str, bad: dict[str, Any],
                                      key: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, **{section: bad})
    assert e.value.key == key


def test_judge_fleet_one_line_per_gateway_and_what_to_fix() -> None:
    from webgateway.fleetcheck import GatewayObserved, judge_fleet

    a, b, c = (Gateway(f"gw{i}", seen=100.0) for i in (1, 2, 3))
    good = "sha256:" + "ab" * 32
    seen = [
        GatewayObserved(a, {"192.0.2.1:53": 42}, {"192.0.2.1:443": good}),
        GatewayObserved(b, {"192.0.2.2:53": 42}, {"192.0.2.2:443": good}),
        GatewayObserved(c, {"192.0.2.3:53": 42}, {"192.0.2.3:443": good}),
    ]
    out = judge_fleet(ZONE, seen, 101.0, 20.0)
    assert [ok for ok, _ in out] == [True] * 3
    assert all("serial 42" in t and "sha256:abab" in t for _, t in out)
    # another serial, another certificate, a gateway that does not answer, a stale one
    seen[1] = GatewayObserved(b, {"192.0.2.2:53": 41}, {"192.0.2.2:443": "sha256:" + "cd" * 32})
    seen[2] = GatewayObserved(replace(c, seen=50.0), {"192.0.2.3:53": "no answer within 3 s"},
                              {"192.0.2.3:443": "the connection was refused"})
    out = judge_fleet(ZONE, seen, 101.0, 20.0)
    fixes = [t for ok, t in out if not ok]
    assert [ok for ok, _ in out].count(True) == 1
    assert any(t.startswith("gateway gw2: DNS 192.0.2.2:53 serves SOA serial 41, the fleet 42")
               for t in fixes), fixes
    assert any(t.startswith("gateway gw2: HTTPS 192.0.2.2:443 presents certificate")
               for t in fixes), fixes
    assert any(t.startswith("gateway gw3: no heartbeat for 51 s") for t in fixes), fixes
    assert any("gw3: DNS 192.0.2.3:53 does not answer" in t for t in fixes), fixes
    assert any("gw3: HTTPS 192.0.2.3:443 gives no certificate" in t for t in fixes), fixes
    # nothing registered: said, with what to do
    assert judge_fleet(ZONE, [], 101.0, 20.0)[0][0] is False
