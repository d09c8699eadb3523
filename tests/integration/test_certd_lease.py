"""certd's lease on each certificate, on both store backends: one gateway runs a job, the
others wait for the lease to lapse; a holder that loses its lease leaves the job at once
(the new holder resumes the order), and never removes the new holder's TXT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry

from certd import service
from certd.certkeys import leaf_matches_key, load_key
from certd.service import ZONE_CERT, CertService, lease_name
from tests.support import ZONE, cert_row, make_config, store_rows
from webgateway.keyseal import slot
from webgateway.model import Certificate, CertState
from webgateway.store import Store
from webgateway.storefactory import open_store


@pytest.fixture
async def two_gateways(tmp_path: Path, store_section: dict[str, Any]
                       ) -> AsyncIterator[tuple[CertService, CertService, Store]]:
    acme = {"directory": "https://127.0.0.1:9/dir"}  # never reached: orders are faked
    cfgs = [make_config(tmp_path / f"gw{i}", store={**store_section, "poll_interval": 0.02},
                        acme=acme) for i in (1, 2)]
    if "url" not in store_section:  # one SQLite file for both, as two processes on one box
        cfgs[1] = make_config(tmp_path / "gw2", store={"path": str(cfgs[0].store.path)},
                              acme=acme)
    stores = [await open_store(c.store) for c in cfgs]
    a, b = (CertService(c, s, CollectorRegistry()) for c, s in zip(cfgs, stores, strict=True))
    assert a.gateway != b.gateway
    try:
        yield a, b, stores[0]
    finally:
        for svc in (a, b):
            await svc.stop()
        for s in stores:
            await s.close()


async def test_one_holder_others_wait_a_thief_stops_the_holder(
        two_gateways: tuple[CertService, CertService, Store],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(service, "LEASE_BEAT", 0.05)
    a, b, store = two_gateways
    started, ran_b = asyncio.Event(), []

    async def long_job() -> None:
        started.set()
        await asyncio.sleep(30)

    async def job_b() -> None:
        ran_b.append(True)

    holder = asyncio.create_task(a._leased("zone", long_job))
    async with asyncio.timeout(5):
        await started.wait()
    before = time.time()
    await b._leased("zone", job_b)  # held by a: b does not run it, and knows until when
    assert not ran_b
    assert before + service.LEASE_TTL - 1 < b.lease_wait["zone"] < time.time() + 21
    await asyncio.sleep(0.2)  # heartbeats keep it a's
    assert not holder.done()

    # the lease goes to another gateway (a's heartbeats stalled past its expiry): a leaves
    await store_rows(store, f"UPDATE leases SET holder = 'elsewhere#1'"
                            f" WHERE name = '{lease_name('zone')}'")
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await holder
    assert "lost the lease of zone (elsewhere#1 holds it)" in caplog.text
    rows = await store_rows(store, "SELECT holder FROM leases")
    assert rows == [("elsewhere#1",)]  # a's release touched only its own lease
    assert "zone" not in a.lost


async def test_a_restarted_gateway_frees_its_previous_leases(
        two_gateways: tuple[CertService, CertService, Store]) -> None:
    a, b, store = two_gateways
    now = time.time()
    await store.take_lease(lease_name("zone"), a.gateway + "#1234.abcdef", 20.0, now)
    await store.take_lease(lease_name("shop"), b.holder, 20.0, now)
    await a.follower.load()
    await a._startup_cleanup()  # a's new process: the old one is gone, its lease with it
    assert await store_rows(store, "SELECT name FROM leases") == [(lease_name("shop"),)]


async def test_a_holder_that_stalled_past_its_lease_overwrites_nothing(
        two_gateways: tuple[CertService, CertService, Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fencing: a's CA call comes back after a stall longer than the lease (a paused VM, a
    SIGSTOP), when b has taken the lease over, issued the certificate and published its
    own challenge TXT. a's failure must not replace b's row with its stale one (no chain,
    state failed) nor remove b's TXT: the store refuses a write whose lease is gone."""
    a, b, store = two_gateways
    assert a.issuer is not None
    domains = a.wanted()[ZONE_CERT]
    txt = a.txt_name(ZONE_CERT)
    theirs = cert_row(ZONE_CERT, domains, trustme.CA().issue_cert(ZONE, f"*.{ZONE}"))

    async def stalled_obtain(*args: Any) -> None:
        published = args[-1]
        await store.add_txt(txt, "a-token")
        published[txt] = {"a-token"}
        # meanwhile (a is stalled) its lease lapsed, b took it, ordered and installed
        await store_rows(store, "UPDATE leases SET expires = 0")
        assert (await store.take_lease(lease_name(ZONE_CERT), b.holder, 20.0,
                                       time.time())).holder == b.holder
        await store.put_certificate(theirs)
        await store.add_txt(txt, "b-token")
        raise TimeoutError("order still processing after 120 s")

    monkeypatch.setattr(a.issuer, "obtain", stalled_obtain)
    await a._attempt(ZONE_CERT, domains)
    row = await store.get_certificate(ZONE_CERT)
    assert row is not None
    assert (row.state, row.chain, row.key, row.failures) == (
        CertState.VALID, theirs.chain, theirs.key, 0)
    assert "b-token" in {t.value for t in await store.list_txt() if t.fqdn == txt}
    rows = await store_rows(store, "SELECT holder FROM leases")
    assert rows == [(b.holder,)]


async def test_an_import_of_legacy_files_never_replaces_a_chain_installed_meanwhile(
        two_gateways: tuple[CertService, CertService, Store], tmp_path: Path) -> None:
    """A rolling upgrade: a lists the row's legacy files (chain still empty), then b, which
    upgraded first, installs a renewed chain before a's import writes: a's import of the
    older files is dropped; on a row that still has no chain it goes in."""
    a, _, store = two_gateways
    domains = a.wanted()[ZONE_CERT]
    old = trustme.CA().issue_cert(ZONE, f"*.{ZONE}")
    chain_file, key_file = tmp_path / "zone.1.fullchain.pem", tmp_path / "zone.1.key.pem"
    chain_file.write_bytes(b"".join(p.bytes() for p in old.cert_chain_pems))
    key_file.write_bytes(old.private_key_pem.bytes())
    far = time.time() + 60 * 86400
    await store.put_certificate(Certificate(ZONE_CERT, domains, CertState.VALID, "", "",
                                            not_after=far, renew_at=far))
    await store_rows(store, f"UPDATE certificates SET cert_path = '{chain_file}',"
                            f" key_path = '{key_file}'")
    await a.follower.load()
    files = await store.legacy_certificate_files()
    assert files == {ZONE_CERT: (str(chain_file), str(key_file))}

    theirs = cert_row(ZONE_CERT, domains, trustme.CA().issue_cert(ZONE, f"*.{ZONE}"))
    await store.put_certificate(theirs)  # b's renewal lands between a's listing and import
    await a._import_files(ZONE_CERT, *files[ZONE_CERT])
    row = await store.get_certificate(ZONE_CERT)
    assert row is not None and (row.chain, row.key) == (theirs.chain, theirs.key)

    await store_rows(store, "UPDATE certificates SET chain = '', key = ''")  # not yet
    await a._import_files(ZONE_CERT, *files[ZONE_CERT])
    row = await store.get_certificate(ZONE_CERT)
    assert row is not None and row.chain == chain_file.read_text()
    assert leaf_matches_key(row.chain.encode(),
                            load_key(a.seal.open(slot("cert", ZONE_CERT), row.key)))
    assert await store.legacy_certificate_files() == {}
