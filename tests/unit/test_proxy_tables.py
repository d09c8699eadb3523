"""Route and certificate tables: lookup order, live changes, reload only on new files."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from proxy.routes import RouteTable
from webgateway.addresses import parse_hostport
from webgateway.dnsname import check_domain
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


def cert_files(ca: trustme.CA, tmp: Path, tag: str, *domains: str) -> tuple[str, str]:
    leaf = ca.issue_cert(*domains)
    c, k = tmp / f"{tag}.pem", tmp / f"{tag}.key"
    leaf.cert_chain_pems[0].write_to_path(str(c))
    leaf.private_key_pem.write_to_path(str(k))
    return str(c), str(k)


def test_exact_san_first_wildcard_next_one_context_per_certificate(
        ca: trustme.CA, tmp_path: Path) -> None:
    zc, zk = cert_files(ca, tmp_path, "zone", ZONE, f"*.{ZONE}")
    ec, ek = cert_files(ca, tmp_path, "exact", f"alice.{ZONE}")
    t = RouteTable(ZONE)
    t.load(snap([], [], [
        Certificate("zone", (ZONE, f"*.{ZONE}"), CertState.VALID, zc, zk),
        Certificate("exact", (f"alice.{ZONE}",), CertState.VALID, ec, ek),
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


def test_reload_only_on_new_files_and_bad_files_keep_the_old_context(
        ca: trustme.CA, tmp_path: Path) -> None:
    zc, zk = cert_files(ca, tmp_path, "z1", ZONE, f"*.{ZONE}")
    first = Certificate("zone", (ZONE, f"*.{ZONE}"), CertState.VALID, zc, zk, updated=1)
    t = RouteTable(ZONE)
    t.load(snap([], [], [first]))
    ctx1 = t.certs.context_for(f"a.{ZONE}")
    t.apply(ChangeSet(2, {}, {}, {}, {"zone": first}))
    assert t.certs.context_for(f"a.{ZONE}") is ctx1
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    t.apply(ChangeSet(3, {}, {}, {}, {"zone": Certificate(
        "zone", first.domains, CertState.VALID, str(broken), zk, updated=2)}))
    assert t.certs.context_for(f"a.{ZONE}") is ctx1
    nc, nk = cert_files(ca, tmp_path, "z2", ZONE, f"*.{ZONE}")
    t.apply(ChangeSet(4, {}, {}, {}, {"zone": Certificate(
        "zone", first.domains, CertState.VALID, nc, nk, updated=3)}))
    ctx2 = t.certs.context_for(f"a.{ZONE}")
    assert ctx2 is not None and ctx2 is not ctx1
    # a renewal in progress without files keeps the working certificate
    t.apply(ChangeSet(5, {}, {}, {}, {"zone": Certificate(
        "zone", first.domains, CertState.PENDING, updated=4)}))
    assert t.certs.context_for(f"a.{ZONE}") is ctx2
    t.apply(ChangeSet(6, {}, {}, {}, {"zone": Certificate(
        "zone", first.domains, CertState.REVOKED, nc, nk, updated=5)}))
    assert t.certs.context_for(f"a.{ZONE}") is None
    t.apply(ChangeSet(7, {}, {}, {}, {"zone": Certificate(
        "zone", first.domains, CertState.VALID, nc, nk, updated=6)}))
    assert t.certs.context_for(f"a.{ZONE}") is not None
    t.apply(ChangeSet(8, {}, {}, {}, {"zone": None}))
    assert t.certs.context_for(f"a.{ZONE}") is None
