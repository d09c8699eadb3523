"""Route and certificate tables: lookup order, live changes, reload only on new files."""

from __future__ import annotations

import errno
import os
from dataclasses import replace

import pytest
import trustme

from proxy.routes import RouteTable
from tests.support import cert_row
from webgateway.addresses import parse_hostport
from webgateway.dnsname import check_domain
from webgateway.keyseal import KeySeal
from webgateway.model import (
    Certificate,
    CertState,
    ChangeSet,
    Domain,
    Name,
    Snapshot,
    TlsMode,
)

ZONE = "gw.test"


def name(label: str, backend: str = "127.0.0.1:80", **kw: object) -> Name:
    return Name(label, 1, (parse_hostport(backend),), **kw)  # type: ignore[arg-type]


def snap(names: list[Name], domains: list[Domain] = (), certs: list[Certificate] = ()
         ) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(1, {n.label: n for n in names}, {d.fqdn: d for d in domains}, {},
                    {c.id: c for c in certs})


def test_exact_name_then_custom_domain() -> None:
    t = RouteTable(ZONE)
    t.load(snap([name("alice"), name("shop", tls=TlsMode.PASSTHROUGH)],
                [Domain("shop.example.org", "shop", 1, "c")]))
    r = t.route("ALICE.gw.test.")
    assert r is not None and r.name.label == "alice" and not r.passthrough
    r = t.route("shop.example.org")
    assert r is not None and r.name.label == "shop" and r.passthrough
    for unknown in ("bob.gw.test", "a.alice.gw.test", "gw.test", "example.org",
                    "x.shop.example.org"):
        assert t.route(unknown) is None, unknown


def test_no_wildcard_custom_domain_can_exist_so_none_routes() -> None:
    # The API admits domains through check_domain, which refuses '*': a wildcard row can
    # only come from outside the API, and it routes nothing (exact names only).
    with pytest.raises(ValueError):
        check_domain("*.apps.example")
    t = RouteTable(ZONE)
    t.load(snap([name("alice")], [Domain("*.apps.example", "alice", 1, "d")]))
    assert t.route("x.apps.example") is None


def test_changes_apply_and_domain_of_a_deleted_name_stops_routing() -> None:
    t = RouteTable(ZONE)
    t.load(snap([name("alice")], [Domain("a.example", "alice", 1, "c")]))
    t.apply(ChangeSet(2, {"bob": name("bob", "[::1]:8080"), "alice": None}, {}, {}, {}))
    assert t.route("alice.gw.test") is None
    assert t.route("a.example") is None
    r = t.route("bob.gw.test")
    assert r is not None and str(r.backends[0]) == "[::1]:8080"
    t.apply(ChangeSet(3, {}, {"a.example": None}, {}, {}))
    assert "a.example" not in t.domains and t.serial == 3


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def issued(ca: trustme.CA, cid: str, *domains: str, seal: KeySeal | None = None,
           **fields: object) -> Certificate:
    return cert_row(cid, domains, ca.issue_cert(*domains), seal, **fields)


def test_exact_san_first_wildcard_next_one_context_per_certificate(ca: trustme.CA) -> None:
    t = RouteTable(ZONE)
    t.load(snap([], [], [
        issued(ca, "zone", ZONE, f"*.{ZONE}"),
        issued(ca, "exact", f"alice.{ZONE}"),
        Certificate("pending", ("p.example",), CertState.PENDING),
    ]))
    alice = t.certs.context_for(f"alice.{ZONE}")
    bob = t.certs.context_for(f"bob.{ZONE}")
    carol = t.certs.context_for(f"carol.{ZONE}")
    assert alice is not None and bob is not None
    assert alice is not bob and bob is carol  # one context per certificate, not per name
    assert t.certs.context_for(ZONE) is bob
    assert t.certs.context_for(f"x.bob.{ZONE}") is None
    assert t.certs.context_for("p.example") is None
    assert t.certs.context_for(f"bob.{ZONE}", http2=True) is not bob
    assert len(t.certs) == 2


def test_reload_only_on_a_new_chain_and_bad_rows_keep_the_old_context(ca: trustme.CA) -> None:
    first = issued(ca, "zone", ZONE, f"*.{ZONE}", updated=1)
    t = RouteTable(ZONE)
    t.load(snap([], [], [first]))
    ctx1 = t.certs.context_for(f"a.{ZONE}")
    t.apply(ChangeSet(2, {}, {}, {}, {"zone": replace(first, updated=2, last_error="x")}))
    assert t.certs.context_for(f"a.{ZONE}") is ctx1
    t.apply(ChangeSet(3, {}, {}, {}, {"zone": replace(first, chain="not a certificate")}))
    assert t.certs.context_for(f"a.{ZONE}") is ctx1
    renewed = issued(ca, "zone", ZONE, f"*.{ZONE}", updated=3)
    t.apply(ChangeSet(4, {}, {}, {}, {"zone": renewed}))
    ctx2 = t.certs.context_for(f"a.{ZONE}")
    assert ctx2 is not None and ctx2 is not ctx1
    # a renewal in progress without a certificate keeps the working one
    t.apply(ChangeSet(5, {}, {}, {}, {"zone": Certificate(
        "zone", first.domains, CertState.PENDING, updated=4)}))
    assert t.certs.context_for(f"a.{ZONE}") is ctx2
    t.apply(ChangeSet(6, {}, {}, {}, {"zone": replace(renewed, state=CertState.REVOKED)}))
    assert t.certs.context_for(f"a.{ZONE}") is None
    t.apply(ChangeSet(7, {}, {}, {}, {"zone": renewed}))
    assert t.certs.context_for(f"a.{ZONE}") is not None
    t.apply(ChangeSet(8, {}, {}, {}, {"zone": None}))
    assert t.certs.context_for(f"a.{ZONE}") is None


def test_sealed_keys_open_only_with_the_fleet_key_and_in_their_own_slot(
        ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    fleet, other = KeySeal(bytes(range(32))), KeySeal(bytes(32))
    good = issued(ca, "zone", ZONE, f"*.{ZONE}", seal=fleet)
    assert good.key.startswith("aesgcm1:") and b"PRIVATE" not in good.key.encode()
    t = RouteTable(ZONE, fleet)
    t.load(snap([], [], [good]))
    ctx = t.certs.context_for(f"a.{ZONE}")
    assert ctx is not None
    # the same row on a gateway with another key file, or none: not served, and said why
    for seal in (other, KeySeal()):
        u = RouteTable(ZONE, seal)
        u.load(snap([], [], [good]))
        assert u.certs.context_for(f"a.{ZONE}") is None
    assert "every gateway needs the same file" in caplog.text
    assert "has none" in caplog.text
    # a sealed key copied into another certificate's row does not open there
    moved = issued(ca, "shop", "shop.example", seal=fleet)
    t.apply(ChangeSet(2, {}, {}, {}, {"shop": replace(moved, key=good.key)}))
    assert t.certs.context_for("shop.example") is None
    assert good.key not in caplog.text and good.chain not in caplog.text


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_descriptor_is_left_open_by_many_reloads_good_or_bad(ca: trustme.CA) -> None:
    """Each load opens memory files for chain and key: every path closes them (a renewal
    every few minutes on a long-running proxy must not leak a descriptor a time)."""
    fleet = KeySeal(bytes(range(32)))
    certs = [issued(ca, "zone", ZONE, f"*.{ZONE}", seal=fleet, updated=i) for i in range(2)]
    bad_chain = replace(certs[0], chain="-----BEGIN CERTIFICATE-----\nAAAA\n")
    t = RouteTable(ZONE, fleet)
    t.load(snap([], [], [certs[0]]))
    before = _open_fds()
    for i in range(150):  # good, bad chain (OpenSSL fails), bad key (fails before)
        for n, cert in enumerate((certs[i % 2], bad_chain, replace(certs[i % 2], key="x"))):
            t.apply(ChangeSet(3 * i + n + 2, {}, {}, {}, {"zone": cert}))
    t.load(snap([], [], [certs[0]]))  # a full reload, as after a feed gap
    assert t.certs.context_for(f"a.{ZONE}") is not None
    assert _open_fds() == before


def test_without_memfd_create_a_certificate_is_not_served_and_the_log_says_why(
        ca: trustme.CA, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A kernel or libc without memfd_create (or a seccomp filter refusing it): the key is
    not written to a disk instead, the proxy keeps running and the log names the cause."""
    cert = issued(ca, "zone", ZONE, f"*.{ZONE}")
    for broken in ("missing", "refused"):
        if broken == "missing":
            monkeypatch.delattr(os, "memfd_create")
        else:
            def refuse(*_: object) -> int:
                raise OSError(errno.ENOSYS, "Function not implemented")
            monkeypatch.setattr(os, "memfd_create", refuse, raising=False)
        t = RouteTable(ZONE)
        t.load(snap([], [], [cert]))
        assert t.certs.context_for(f"a.{ZONE}") is None
        assert "memfd_create" in caplog.text
        caplog.clear()
