"""Custom-domain claims with real DNS: the owner's zone is served by Knot (their DNS host),
certd looks for each claim's proof there, Pebble validates DNS-01 through our dnsd, and
owners talk to the real API over HTTP. Squatting a domain gets the squatter nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from prometheus_client import CollectorRegistry

from certd.service import CertService
from tests.integration.test_api import Gw
from tests.integration.test_certd_pebble import dns_target, verify_chain
from tests.knot import Knot, knot_missing, owner_zone
from tests.pebble import pebble_factory, requires_pebble
from tests.support import ZONE, Running, free_port, make_config, services
from webgateway.apiservice import ApiService
from webgateway.config import Config
from webgateway.model import Certificate
from webgateway.when import parse_rfc3339

__all__ = ["pebble_factory"]
pytestmark = [requires_pebble,
              pytest.mark.skipif(knot_missing(), reason="needs knotd (apt: knot)")]

OWNER_ZONE = "example.org"
SHOP = f"shop.{OWNER_ZONE}"


async def dnsd_query(cfg: Config, name: str, rdtype: str) -> dns.message.Message:
    host, port = dns_target(cfg)
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), host, port=port,
                                    timeout=2)


async def poll(gw: Gw, token: str, path: str, done: Any, seconds: float = 60) -> dict[str, Any]:
    """GET ``path`` until ``done(body)``; bounded in time."""
    end = time.monotonic() + seconds
    body: dict[str, Any] = {}
    while time.monotonic() < end:
        _, body = await gw.call("GET", path, token)
        if done(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} after {seconds} s: {body}")


async def owners(gw: Gw, *names: str) -> list[str]:
    tokens = []
    for name in names:
        token = await gw.owner(name)
        st, _ = await gw.call("PUT", f"/v1/names/{name}", token, {"backends": ["10.0.0.1:80"]})
        assert st == 201
        tokens.append(token)
    return tokens


def api_client(run: Running, http: aiohttp.ClientSession, tmp: Path) -> Gw:
    """test_api's client, on the API that ``services`` started."""
    api = run.services["api"]
    assert isinstance(api, ApiService)
    cfg = run.config
    return Gw(f"http://127.0.0.1:{cfg.api.listen.port}",
              cfg.api.admin_token_file.read_text().strip(), http, run.store, tmp,
              api.api.app.router)


def challenge_target(claim: dict[str, Any]) -> str:
    return {r["name"]: r["target"] for r in claim["records"]}[f"_acme-challenge.{claim['fqdn']}"]


@pytest.fixture
async def world(tmp_path: Path, pebble_factory) -> AsyncIterator[tuple[Gw, Knot, Config, Any]]:  # type: ignore[no-untyped-def]
    knot_port = free_port()
    knot = await asyncio.to_thread(Knot, tmp_path / "knot", "127.0.0.1", knot_port,
                                   {OWNER_ZONE: owner_zone(OWNER_ZONE)})
    try:
        cfg0 = make_config(tmp_path)
        pb = pebble_factory(dns_target(cfg0))
        cfg = make_config(
            tmp_path, dns={"listen": [str(cfg0.dns.listen[0])]},
            acme={"directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
                  "resolver": f"127.0.0.1:{knot_port}", "propagation_timeout": 20})
        async with services(cfg, "dnsd", "certd", "api") as run, aiohttp.ClientSession() as http:
            yield api_client(run, http, tmp_path), knot, cfg, pb
    finally:
        knot.stop()


async def test_two_owners_claim_one_domain_and_the_dns_decides(world: Any) -> None:
    gw, knot, cfg, pebble = world
    squatter, shop = await owners(gw, "squatter", "shop")
    # the squatter claims first; the real owner is not blocked, and gets its own target
    st, taken = await gw.call("PUT", f"/v1/domains/{SHOP}", squatter, {"name": "squatter"})
    assert st == 201, taken
    st, mine = await gw.call("PUT", f"/v1/domains/{SHOP}", shop, {"name": "shop"})
    assert st == 201 and mine["state"] == "pending", mine
    assert challenge_target(mine) != challenge_target(taken)
    # nothing about the domain is served or routed while every claim is pending
    r = await dnsd_query(cfg, f"_acme-challenge.{SHOP}", "CNAME")
    assert r.rcode() == dns.rcode.REFUSED
    # the squatter's claim waits for a CNAME that the domain's DNS does not have
    lost = await poll(gw, squatter, f"/v1/domains/{SHOP}",
                      lambda b: "waiting for DNS" in (b.get("detail") or ""))
    assert "_acme-challenge.shop.example.org has no CNAME" in lost["detail"]
    # the real owner creates exactly what the API told them, at their DNS host
    t0 = time.monotonic()
    knot.set_records(OWNER_ZONE, [("shop", "CNAME", f"shop.{ZONE}."),
                                  ("_acme-challenge.shop", "CNAME", challenge_target(mine) + ".")])
    won = await poll(gw, shop, f"/v1/domains/{SHOP}", lambda b: b["state"] == "active")
    print(f"\nCNAMEs created -> domain active with its certificate in "
          f"{time.monotonic() - t0:.2f} s")
    assert won["certificate"]["state"] == "valid" and won["certificate"]["domains"] == [SHOP]
    cert = await gw.store.get_certificate(SHOP)
    assert isinstance(cert, Certificate)
    verify_chain(pebble, cert, gw.tmp)
    # the squatter's GET says it lost, when and why; its records and certificate are gone
    st, lost = await gw.call("GET", f"/v1/domains/{SHOP}", squatter)
    assert st == 200 and lost["state"] == "dropped", lost
    assert lost["detail"].startswith("dropped on ") and "UTC" in lost["detail"]
    assert "another owner proved control of shop.example.org first" in lost["detail"]
    assert lost["records"] == [] and lost["certificate"] is None
    # dnsd serves the proof only for the claim that holds the domain
    r = await dnsd_query(cfg, f"_acme-challenge.{SHOP}", "CNAME")
    assert [rd.target.to_text() for rrset in r.answer for rd in rrset] == \
        [challenge_target(mine) + "."]
    # a held domain cannot be taken: 409 names the CNAME that proves ownership
    st, err = await gw.call("PUT", f"/v1/domains/{SHOP}", squatter, {"name": "squatter"})
    assert st == 409 and f"CNAME _acme-challenge.{SHOP} pointed at" in err["detail"], err


async def test_a_claim_without_proof_expires_and_says_so(tmp_path: Path) -> None:
    """certd expires claims even without [acme]: a claim past domain_claim_ttl says so."""
    cfg = make_config(tmp_path, api={"domain_claim_ttl": "1h"})
    async with services(cfg, "api") as run, aiohttp.ClientSession() as http:
        gw = api_client(run, http, tmp_path)
        (token,) = await owners(gw, "late")
        st, claim = await gw.call("PUT", f"/v1/domains/{SHOP}", token, {"name": "late"})
        assert st == 201
        assert parse_rfc3339(claim["expires"]) - parse_rfc3339(claim["created"]) == 3600
        # make the claim 2 hours old, as if the owner never created the CNAMEs
        await run.store.db.execute("UPDATE domains SET created = created - 7200")
        certd = CertService(cfg, run.store, CollectorRegistry())
        await certd.start()
        try:
            gone = await poll(gw, token, f"/v1/domains/{SHOP}",
                              lambda b: b["state"] == "expired", seconds=20)
        finally:
            await certd.stop()
        assert gone["detail"].startswith("expired on ") and "was not seen in time" in gone["detail"]
        assert gone["records"] == [] and gone["expires"] is None
        # claiming again gives a fresh claim with a new target
        st, again = await gw.call("PUT", f"/v1/domains/{SHOP}", token, {"name": "late"})
        assert st == 201 and again["state"] == "pending"
        assert challenge_target(again) != challenge_target(claim)
