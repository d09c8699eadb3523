"""``webgateway status``'s rules and layout, on values."""

from __future__ import annotations

import re

from webgateway.status import Check, Status, assess_ns, failures_of, render, tunnels_of


def test_every_server_must_serve_the_stores_serial() -> None:
    checks = assess_ns({"ns1 (192.0.2.1)": 7, "ns2 (192.0.2.2)": 6, "ns3 (192.0.2.3)": "timed out"},
                       7, "ns")
    assert [(c.where, c.ok) for c in checks] == [
        ("ns1 (192.0.2.1)", True), ("ns2 (192.0.2.2)", False), ("ns3 (192.0.2.3)", False)]
    assert checks[1].detail == "serves serial 6, the store has 7"
    assert "timed out" in checks[2].detail
    # with the API down there is no store serial to compare with: answering is enough
    assert assess_ns({"a": 3}, None, "dnsd")[0].ok


def test_failures_come_from_certificates_and_pending_domains() -> None:
    certs = [
        {"id": "zone", "state": "valid", "last_error": None},
        {"id": "a.example", "state": "failed", "last_error": "rateLimited",
         "next_attempt": "2026-12-01T10:05:00Z"},
        {"id": "b.example", "state": "failed", "last_error": None},
    ]
    domains = [
        {"fqdn": "c.example", "state": "pending", "detail": "no CNAME at c.example yet"},
        {"fqdn": "d.example", "state": "pending", "detail": None},
        {"fqdn": "e.example", "state": "active", "detail": "old note"},
        {"fqdn": "c.example", "state": "dropped", "detail": "dropped on ...: another owner"},
        {"fqdn": "f.example", "state": "expired", "detail": "expired on ..."},
    ]
    assert failures_of(certs, domains) == [
        "certificate a.example: rateLimited (next try 2026-12-01 10:05 UTC)",
        "certificate b.example: failed",
        "domain c.example: no CNAME at c.example yet",
    ]


def test_render_is_one_screen_with_dates() -> None:
    st = Status(url="http://127.0.0.1:8000", zone="gw.test", serial=9,
                services=[Check("api", "http://127.0.0.1:8000", True, "store serial 9"),
                          Check("proxy", "127.0.0.1:443", False, "Connection refused")],
                counts={"owners": 2, "names": 5, "domains": None},
                certificates=[{"id": "zone", "domains": ["gw.test", "*.gw.test"],
                               "issuer": "R11", "not_after": "2027-01-02T03:04:05Z",
                               "days_left": 33, "state": "valid", "last_error": None}])
    out = render(st)
    assert not st.healthy
    assert re.search(r"^proxy    127\.0\.0\.1:443 +DOWN   Connection refused$", out, re.M)
    assert "zone  gw.test, *.gw.test  R11     2027-01-02         33  valid  -" in out
    assert "OWNERS  NAMES  DOMAINS\n     2      5  -" in out
    assert "no recent failures" in out


def test_tunnels_are_their_own_section_only_when_tunnel_names_exist() -> None:
    names = [
        {"name": "web", "tunnel": False, "owner": "alice"},
        {"name": "hidden", "tunnel": True, "owner": "alice",
         "tunnel_nodes": {"connected": 2, "since": "2026-11-29T21:40:12Z"}},
        {"name": "idle", "tunnel": True, "owner": "bob",
         "tunnel_nodes": {"connected": 0, "since": None}},
    ]
    st = Status(url="u", tunnels=tunnels_of(names))
    out = render(st)
    assert re.search(r"^TUNNEL  OWNER  NODES  CONNECTED SINCE\n"
                     r"hidden  alice      2  2026-11-29 21:40 UTC\n"
                     r"idle    bob        0  -$", out, re.M), out
    assert st.as_json()["tunnels"][0] == {"name": "hidden", "owner": "alice", "nodes": 2,
                                          "since": "2026-11-29T21:40:12Z"}
    assert st.healthy  # a node that is away is its owner's business, not the gateway's
    assert "TUNNEL" not in render(Status(url="u", tunnels=tunnels_of(names[:1])))
    unseen = render(Status(url="u", tunnels=tunnels_of([{"name": "h", "tunnel": True,
                                                          "tunnel_nodes": None}])))
    assert re.search(r"^h       -      -      -$", unseen, re.M) and "nodes unknown" in unseen
