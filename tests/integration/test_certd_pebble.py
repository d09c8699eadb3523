"""certd against a real Pebble validating through our own dnsd, all on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from certd.certkeys import leaf_matches_key, load_key
from certd.service import CertService
from dnsd.service import DnsService
from tests.certd_harness import dns_target, verify_chain, wait_cert
from tests.pebble import Pebble, pebble_factory, requires_pebble
from tests.support import ZONE, fixed_label, held_domain, make_config, services, store_rows
from webgateway.config import Config
from webgateway.keyseal import KeySeal, slot
from webgateway.logsetup import keep_parameters_out
from webgateway.model import (
    Certificate,
    CertState,
    Domain,
    DomainState,
    Name,
    acme_account_meta_key,
)
from webgateway.sqlite_store import SqliteStore

__all__ = ["pebble_factory"]
pytestmark = requires_pebble


@dataclass
class Gw:
    config: Config
    store: SqliteStore
    dnsd: DnsService
    certd: CertService
    pebble: Pebble
    registry: CollectorRegistry


@contextlib.asynccontextmanager
async def gateway(  # type: ignore[no-untyped-def]
    tmp_path: Path, pebble_factory, dnssec: bool = False, key_file: bool = False,
    acme_extra: dict[str, Any] | None = None, **pebble_kw
) -> AsyncIterator[Gw]:
    cfg0 = make_config(tmp_path)
    pb = pebble_factory(dns_target(cfg0), **pebble_kw)
    acme = {"directory": pb.directory, "ca_bundle": str(pb.ca_bundle), "email": "ops@example.com",
            "resolver": f"{dns_target(cfg0)[0]}:{dns_target(cfg0)[1]}", "concurrency": 4,
            "propagation_timeout": 20}
    if "eab_keys" in pebble_kw:
        kid, hmac = next(iter(pebble_kw["eab_keys"].items()))
        acme.update(eab_kid=kid, eab_hmac_key=hmac)
    acme.update(acme_extra or {})
    store: dict[str, Any] = {}
    if key_file:
        (tmp_path / "store.key").write_bytes(os.urandom(32))
        (tmp_path / "store.key").chmod(0o600)
        store["key_file"] = "store.key"
    cfg = make_config(tmp_path, acme=acme, dns={"listen": [str(cfg0.dns.listen[0])]},
                      dnssec={"enabled": dnssec}, store=store)
    async with services(cfg, "dnsd", "certd") as run:
        dnsd, certd = run.services["dnsd"], run.services["certd"]
        assert isinstance(dnsd, DnsService) and isinstance(certd, CertService)
        yield Gw(cfg, run.store, dnsd, certd, pb, run.registry)


def _secret_forms(key: ec.EllipticCurvePrivateKey) -> list[str]:
    """The private scalar as a log line could carry it."""
    d = key.private_numbers().private_value.to_bytes(32, "big")
    return [d.hex(), base64.b64encode(d).decode().rstrip("="),
            base64.urlsafe_b64encode(d).decode().rstrip("=")]


async def txt_at(cfg: Config, fqdn: str) -> list[str]:
    host, port = dns_target(cfg)
    resp = await dns.asyncquery.udp(dns.message.make_query(fqdn, "TXT"), host, port=port,
                                    timeout=2)
    return [rr.to_text() for rrset in resp.answer for rr in rrset if rrset.rdtype == 16]


async def test_wildcard_issued_through_our_dns(  # type: ignore[no-untyped-def]
        tmp_path: Path, pebble_factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # as [log] level = "debug" sets it
    keep_parameters_out()
    async with gateway(tmp_path, pebble_factory, key_file=True) as gw:
        cert = await wait_cert(gw.store, "zone")
        assert set(cert.domains) == {ZONE, f"*.{ZONE}"}
        leaf = x509.load_pem_x509_certificates(cert.chain.encode())[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert set(sans.value.get_values_for_type(x509.DNSName)) == {ZONE, f"*.{ZONE}"}
        verify_chain(gw.pebble, cert, tmp_path)
        # the keys are in the store, sealed with [store] key_file, and nowhere on disk
        seal = KeySeal(gw.config.store.key)
        key = load_key(seal.open(slot("cert", "zone"), cert.key))
        assert leaf_matches_key(cert.chain.encode(), key)
        account = await gw.store.get_secret("acme-account")
        assert account is not None and account.startswith("aesgcm1:")
        assert cert.key.startswith("aesgcm1:") and cert.order_key == ""
        assert not any(gw.config.store.certs_dir.iterdir())
        # and in no log line, in any form: a PEM private key, the private scalar in hex or
        # base64 (either alphabet), the sealed text. Not the PEM's base64 lines: their tail
        # is the public key, which the CSR in the debug log rightly carries.
        keys = [key, load_key(seal.open("acme-account", account))]
        needles = [cert.key, account, "PRIVATE KEY",
                   *(form for k in keys for form in _secret_forms(k))]
        leaked = [n for n in needles if n in caplog.text]
        assert not leaked, f"{len(leaked)} secret form(s) in the log"
        assert "acme-account" not in repr(cert) and cert.key not in repr(cert)
        assert cert.not_before < cert.renew_at < cert.not_after
        assert cert.order_url == "" and cert.failures == 0
        # the TXT is gone from the store and from DNS
        assert await gw.store.list_txt() == []
        assert await txt_at(gw.config, f"_acme-challenge.{ZONE}") == []
        url = await gw.store.get_meta(acme_account_meta_key(gw.pebble.directory))
        assert url and url.startswith("https://127.0.0.1")
        sample = gw.registry.get_sample_value
        assert sample("webgateway_acme_orders_total", {"outcome": "issued"}) == 1
        assert sample("webgateway_acme_order_duration_seconds_count", {"result": "issued"}) == 1
        left = sample("webgateway_certificate_expiry_seconds", {"certificate": "zone"})
        assert left is not None and abs(left - (cert.not_after - time.time())) < 60


async def test_wildcard_issued_with_dnssec_on(tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    """certd keeps working when dnsd signs: the DNS-01 TXT answers carry RRSIGs."""
    async with gateway(tmp_path, pebble_factory, dnssec=True) as gw:
        seen: list[dns.message.Message] = []
        host, port = dns_target(gw.config)
        fqdn = f"_acme-challenge.{ZONE}"

        async def watch() -> None:  # catch the TXT while the order is being validated
            while True:
                q = dns.message.make_query(fqdn, "TXT", want_dnssec=True)
                r = await dns.asyncquery.udp(q, host, port=port, timeout=2)
                if r.answer:
                    seen.append(r)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            cert = await wait_cert(gw.store, "zone")
        finally:
            watcher.cancel()
        assert set(cert.domains) == {ZONE, f"*.{ZONE}"}
        assert seen, "the DNS-01 TXT was never seen"
        assert {r.rdtype for r in seen[0].answer} == {16, 46}  # TXT and its RRSIG


async def test_bad_nonce_30_percent_still_issues(tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    from webgateway.addresses import parse_hostport

    async with gateway(tmp_path, pebble_factory, nonce_reject=30) as gw:
        cert = await wait_cert(gw.store, "zone")
        verify_chain(gw.pebble, cert, tmp_path)
        assert cert.failures == 0
        # three more orders (~40 signed requests in all): no badNonce at 30 % has odds < 1e-6
        owner = await gw.store.create_owner("carol", "h3")
        await gw.store.put_name(Name("shop", owner.id, (parse_hostport("127.0.0.1:9"),)), 10)
        fqdns = [f"s{i}.example.org" for i in range(3)]
        for fqdn in fqdns:
            await held_domain(gw.store, fqdn, "shop", owner.id)
        for fqdn in fqdns:
            c = await wait_cert(gw.store, fqdn)
            assert c.failures == 0
        assert gw.certd.issuer is not None and gw.certd.issuer.bad_nonces > 0


async def test_custom_domain_issue_then_remove_revokes(tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    async with gateway(tmp_path, pebble_factory) as gw:
        await wait_cert(gw.store, "zone")
        owner = await gw.store.create_owner("alice", "h1")
        from webgateway.addresses import parse_hostport
        await gw.store.put_name(Name("shop", owner.id, (parse_hostport("127.0.0.1:9"),)), 10)
        fqdn = "shop.example.org"
        await held_domain(gw.store, fqdn, "shop", owner.id)
        cert = await wait_cert(gw.store, fqdn)
        assert cert.domains == (fqdn,)
        verify_chain(gw.pebble, cert, tmp_path)
        end = time.monotonic() + 10
        while (d := await gw.store.get_domain(fqdn)) and d.state != DomainState.ACTIVE:
            assert time.monotonic() < end, d
            await asyncio.sleep(0.05)
        serial = x509.load_pem_x509_certificates(cert.chain.encode())[0].serial_number
        assert gw.pebble.cert_status(serial)["Status"] == "Valid"
        await gw.store.delete_domain(fqdn, owner.id)
        end = time.monotonic() + 20
        while await gw.store.get_certificate(fqdn) is not None:
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        assert gw.pebble.cert_status(serial)["Status"] == "Revoked"
        assert await gw.store.list_txt() == []


async def test_ca_unreachable_backs_off_and_dns_keeps_answering(tmp_path: Path) -> None:
    from tests.support import free_port
    cfg = make_config(tmp_path, acme={"directory": f"https://127.0.0.1:{free_port()}/dir"})
    store = SqliteStore(cfg.store.path, 0.02)
    await store.open()
    registry = CollectorRegistry()
    dnsd = DnsService(cfg, store, registry)
    certd = CertService(cfg, store, registry)
    await dnsd.start()
    # TXT of an order that died with a previous process (no order_url kept): removed
    stale = f"{fixed_label('gone.example.org')}._acme.{ZONE}"
    await store.add_txt(stale, "left-over")
    await certd.start()
    try:
        end = time.monotonic() + 20
        while True:
            c = await store.get_certificate("zone")
            if c is not None and c.failures >= 1:
                break
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        assert c.state == CertState.FAILED and "cannot reach the CA" in c.last_error
        assert (registry.get_sample_value("webgateway_acme_orders_total",
                                          {"outcome": "ca_unreachable"}) or 0) >= 1
        assert c.next_attempt > time.time()
        host, port = dns_target(cfg)
        resp = await dns.asyncquery.udp(dns.message.make_query(ZONE, "SOA"), host, port=port,
                                        timeout=2)
        assert resp.answer
        assert await store.list_txt() == []
    finally:
        await certd.stop()
        await dnsd.stop()
        await store.close()


EAB = {"kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"}


async def test_external_account_binding(tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    async with gateway(tmp_path, pebble_factory, eab_keys=EAB) as gw:
        cert = await wait_cert(gw.store, "zone")
        verify_chain(gw.pebble, cert, tmp_path)
        assert await gw.store.get_meta(acme_account_meta_key(gw.pebble.directory))


async def test_domain_without_cnames_waits_with_a_clear_detail(tmp_path: Path) -> None:
    """The resolver certd asks is a dnsd that knows nothing of the domain (REFUSED):
    the domain stays pending, with the CNAME to create in its detail, and no order."""
    from tests.support import free_port
    from webgateway.addresses import parse_hostport

    other_cfg = make_config(tmp_path / "other", zone={"name": "elsewhere.test",
                                                      "nameservers": {"ns1.elsewhere.test":
                                                                      ["127.0.0.1"]}})
    other_store = SqliteStore(other_cfg.store.path, 0.02)
    await other_store.open()
    other = DnsService(other_cfg, other_store, CollectorRegistry())
    await other.start()
    cfg = make_config(tmp_path, acme={"directory": f"https://127.0.0.1:{free_port()}/dir",
                                      "resolver": str(other_cfg.dns.listen[0])})
    store = SqliteStore(cfg.store.path, 0.02)
    await store.open()
    certd = CertService(cfg, store, CollectorRegistry())
    await certd.start()
    try:
        owner = await store.create_owner("bob", "h2")
        await store.put_name(Name("shop", owner.id, (parse_hostport("127.0.0.1:9"),)), 10)
        fqdn = "shop.example.org"
        claim = Domain(fqdn, "shop", owner.id, "c0123456789abcdef")
        await store.put_domain(claim, 10)
        end = time.monotonic() + 20
        while True:
            d = await store.get_domain(fqdn)
            if d is not None and d.detail:
                break
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        assert d.state == DomainState.PENDING
        assert "waiting for DNS" in d.detail
        assert f"_acme-challenge.{fqdn} -> {claim.challenge_label}._acme.{ZONE}" in d.detail
        await asyncio.sleep(0.5)
        assert await store.get_certificate(fqdn) is None
    finally:
        await certd.stop()
        await store.close()
        await other.stop()
        await other_store.close()


async def test_renewal_when_due_replaces_chain_and_key(
        tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    async with gateway(tmp_path, pebble_factory) as gw:
        first = await wait_cert(gw.store, "zone")
        # make it due now, as the 2/3-of-lifetime clock would
        await gw.store.put_certificate(replace(first, renew_at=time.time() - 1))
        second = await wait_cert(gw.store, "zone", not_chain=first.chain)
        assert second.key != first.key
        assert second.not_before >= first.not_before
        verify_chain(gw.pebble, second, tmp_path)
        assert await gw.store.list_txt() == []


async def test_an_upgraded_store_imports_the_certificate_files_instead_of_reordering(
        tmp_path: Path) -> None:
    """A schema-3 row names its chain and key files: certd stores them (sealed) and orders
    nothing, so an upgrade neither re-issues nor stops serving."""
    import sqlite3

    import trustme

    from tests.support import free_port
    from webgateway.sqlite_store import MIGRATIONS

    (tmp_path / "store.key").write_bytes(os.urandom(32))
    (tmp_path / "store.key").chmod(0o600)
    cfg = make_config(tmp_path, acme={"directory": f"https://127.0.0.1:{free_port()}/dir"},
                      store={"key_file": "store.key"})
    leaf = trustme.CA().issue_cert(ZONE, f"*.{ZONE}")
    chain, key = tmp_path / "zone.1.fullchain.pem", tmp_path / "zone.1.key.pem"
    chain.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    con = sqlite3.connect(cfg.store.path)
    for i, script in enumerate(MIGRATIONS[:3], start=1):
        con.executescript(script + f"; PRAGMA user_version = {i};")
    far = time.time() + 60 * 86400
    con.execute("INSERT INTO certificates VALUES ('zone', ?, 'valid', ?, ?, 1, ?, ?, 0, 0,"
                " '', '', 5)", (f'["{ZONE}", "*.{ZONE}"]', str(chain), str(key), far, far))
    con.commit()
    con.close()
    store = SqliteStore(cfg.store.path, 0.02)
    await store.open()
    certd = CertService(cfg, store, CollectorRegistry())
    await certd.start()
    try:
        end = time.monotonic() + 10
        while not (c := await store.get_certificate("zone")) or not c.in_place:
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        assert c.state == CertState.VALID and c.failures == 0 and c.key.startswith("aesgcm1:")
        opened = load_key(KeySeal(cfg.store.key).open(slot("cert", "zone"), c.key))
        assert leaf_matches_key(c.chain.encode(), opened)
        await asyncio.sleep(0.3)
        assert (await store.get_certificate("zone")) == c  # nothing ordered
    finally:
        await certd.stop()
        await store.close()


async def shop_first_failure(gw: Gw, seconds: float) -> Certificate:
    """Verify shop.example.org for a new owner; its certificate row once an attempt failed."""
    from webgateway.addresses import parse_hostport

    owner = await gw.store.create_owner("dave", "h4")
    await gw.store.put_name(Name("shop", owner.id, (parse_hostport("127.0.0.1:9"),)), 10)
    await held_domain(gw.store, "shop.example.org", "shop", owner.id)
    end = time.monotonic() + seconds
    while not (c := await gw.store.get_certificate("shop.example.org")) or not c.failures:
        assert time.monotonic() < end
        await asyncio.sleep(0.05)
    return c


async def test_the_order_budget_holds_a_new_order_until_the_window_frees_one(  # type: ignore[no-untyped-def]
        tmp_path: Path, pebble_factory) -> None:
    async with gateway(tmp_path, pebble_factory,
                       acme_extra={"max_orders": 1, "order_window": "1h"}) as gw:
        await wait_cert(gw.store, "zone")  # the one order the window allows
        c = await shop_first_failure(gw, 20)
        assert c.state == CertState.FAILED and not c.order_url
        assert "max_orders" in c.last_error and "new orders of this account" in c.last_error
        assert 3500 < c.next_attempt - time.time() < 3700  # when the zone's order leaves it
        assert gw.registry.get_sample_value("webgateway_acme_orders_total",
                                            {"outcome": "retry_later"}) == 1
        rows = await store_rows(gw.store, "SELECT cert_id FROM acme_orders")
        assert rows == [("zone",)]


async def test_a_new_order_the_ca_never_took_is_not_counted(  # type: ignore[no-untyped-def]
        tmp_path: Path, pebble_factory) -> None:
    """The budget counts orders the CA created, not attempts: while the CA is unreachable,
    each retry of a custom domain's order must not spend a slot (an outage would otherwise
    use up the window and hold every new certificate for hours after the CA is back)."""
    async with gateway(tmp_path, pebble_factory,
                       acme_extra={"max_orders": 2, "order_window": "1h"}) as gw:
        await wait_cert(gw.store, "zone")
        gw.pebble.stop()  # the account is known; the next new order gets no answer
        c = await shop_first_failure(gw, 60)
        assert c.state == CertState.FAILED and "max_orders" not in c.last_error
        rows = await store_rows(gw.store, "SELECT cert_id FROM acme_orders")
        assert rows == [("zone",)]
