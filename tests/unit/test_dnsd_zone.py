"""The zone view: applying change sets one by one gives the same answers as a fresh load."""

from __future__ import annotations

from dataclasses import replace

import dns.message
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd import wire
from dnsd.responder import Responder
from dnsd.zone import ENT, NODE, NX, OUTSIDE, ZoneView
from tests.dnszone import ZONE, snapshot, zone_config
from tests.support import fixed_label as challenge_label
from webgateway.model import ChangeSet, Domain, Name, Snapshot, merge

LABELS = ["alice", "bob", "carol", "ns1", "_acme-challenge"]
DOMAINS = ["shop.example.org", "a.example.org", "b.a.example.org", f"in.{ZONE}"]
TXT_AT = [f"_acme-challenge.{ZONE}", f"_acme-challenge.alice.{ZONE}", f"deep.x.y.{ZONE}",
          f"{challenge_label('shop.example.org')}._acme.{ZONE}", "outside.example.net",
          "t.shop.example.org", "x.y.b.a.example.org"]


def probe_names() -> list[str]:
    out = [ZONE, f"_acme.{ZONE}", f"x.y.{ZONE}", f"y.{ZONE}", f"alice.{ZONE}", "example.org",
           f"nx.{ZONE}", "outside.example.net"]
    out += [f"{lab}.{ZONE}" for lab in LABELS[:3]]
    out += TXT_AT
    for d in DOMAINS:
        out += [d, f"_acme-challenge.{d}", f"{challenge_label(d)}._acme.{ZONE}", f"q.{d}"]
    return out


def answers(view: ZoneView) -> dict[tuple[str, str], bytes]:
    r = Responder(view)
    out = {}
    for name in probe_names():
        for rdtype in ("A", "TXT", "SOA", "ANY"):
            m = dns.message.make_query(name, rdtype, use_edns=False)
            m.id = 1
            reply = r.handle(m.to_wire())
            assert reply is not None
            out[(name, rdtype)] = reply
    return out


change = st.one_of(
    st.tuples(st.just("name"), st.sampled_from(LABELS[:3]), st.booleans()),
    st.tuples(st.just("domain"), st.sampled_from(DOMAINS), st.booleans()),
    st.tuples(st.just("txt"), st.sampled_from(TXT_AT + [f"{challenge_label(d)}._acme.{ZONE}"
                                                        for d in DOMAINS]),
              st.lists(st.sampled_from(["v1", "v2", "v3"]), max_size=3, unique=True)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(change, min_size=1, max_size=12))
def test_incremental_apply_equals_fresh_load(steps: list[tuple[object, ...]]) -> None:
    state = snapshot(serial=1)
    view = ZoneView(zone_config())
    view.load(state)
    serial = 1
    for kind, key, value in steps:
        serial += 1
        assert isinstance(key, str)
        if kind == "name":
            change = ChangeSet(serial, {key: Name(key, 1, ()) if value else None}, {}, {}, {})
        elif kind == "domain":
            dom = Domain(key, "alice", 1, challenge_label(key)) if value else None
            change = ChangeSet(serial, {}, {key: dom}, {}, {})
        else:
            assert isinstance(value, list)
            change = ChangeSet(serial, {}, {}, {key: tuple(value)}, {})
        names, domains = dict(state.names), dict(state.domains)
        merge(names, change.names)
        merge(domains, change.domains)
        txt = {k: v for k, v in {**state.txt, **change.txt}.items() if v}  # () = none left
        state = Snapshot(serial, names, domains, txt, {})
        view.apply(change)
        fresh = ZoneView(zone_config())
        fresh.load(state)
        assert answers(view) == answers(fresh), steps


def test_kinds() -> None:
    view = ZoneView(zone_config())
    view.load(snapshot())
    w = wire.name_to_wire
    assert view.find(w(f"alice.{ZONE}")).kind == NODE
    assert view.find(w(f"_acme.{ZONE}")).kind == ENT
    assert view.find(w(f"zed.{ZONE}")).kind == NX
    assert view.find(w("zed.example.org")).kind == OUTSIDE
    assert view.find(w("q.shop.example.org")).kind == NX
    assert view.find(w("example.org")).kind == OUTSIDE


def test_name_collision_with_static_record_keeps_both() -> None:
    """A reserved label equal to a name server host keeps the glue (static wins, merged)."""
    view = ZoneView(zone_config())
    snap = snapshot()
    view.load(replace(snap, names={**snap.names, "ns1": Name("ns1", 1, ())}))
    m = dns.message.make_query(f"ns1.{ZONE}", "A", use_edns=False)
    raw = Responder(view).handle(m.to_wire())
    assert raw is not None
    r = dns.message.from_wire(raw)
    assert r.rcode() == dns.rcode.NOERROR
    assert {rd.to_text() for rd in r.answer[0]} == {"192.0.2.53"}


def test_txt_below_a_custom_domain_follows_the_domain_zone() -> None:
    shop = "shop.example.org"
    view = ZoneView(zone_config())
    view.load(snapshot(serial=1))
    view.apply(ChangeSet(2, {}, {shop: None}, {}, {}))
    view.apply(ChangeSet(3, {}, {}, {f"t.{shop}": ("v",)}, {}))
    assert view.find(wire.name_to_wire(f"t.{shop}")).kind == OUTSIDE
    view.apply(ChangeSet(4, {}, {shop: Domain(shop, "alice", 1, challenge_label(shop))}, {}, {}))
    node = view.find(wire.name_to_wire(f"t.{shop}"))
    assert node.kind == NODE and wire.TXT in node.rrsets
    view.apply(ChangeSet(5, {}, {shop: None}, {}, {}))
    assert view.find(wire.name_to_wire(f"t.{shop}")).kind == OUTSIDE


def test_a_fresh_snapshot_drops_the_cached_replies() -> None:
    """A snapshot load (start-up, and the follower's recovery from a failed change) must
    retire every reply the responder cached from the view before it, as a change does."""
    view = ZoneView(zone_config())
    view.load(snapshot(serial=1))
    r = Responder(view)

    def ask(name: str, rdtype: str) -> dns.message.Message:
        m = dns.message.make_query(name, rdtype, use_edns=False)
        m.id = 7
        raw = r.handle(m.to_wire())
        assert raw is not None
        return dns.message.from_wire(raw)

    for _ in range(2):
        assert ask(f"alice.{ZONE}", "A").rcode() == dns.rcode.NOERROR
        assert ask(ZONE, "SOA").answer[0][0].serial == 1
    assert r.hits == 2  # the second round came from the reply cache
    snap = snapshot(serial=2)
    view.load(replace(snap, names={k: v for k, v in snap.names.items() if k != "alice"}))
    assert ask(f"alice.{ZONE}", "A").rcode() == dns.rcode.NXDOMAIN
    assert ask(ZONE, "SOA").answer[0][0].serial == 2
