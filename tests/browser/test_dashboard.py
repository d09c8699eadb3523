"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

An owner signs in, adds a name, sees it and the certificate's expiry, signs out; a
second owner's data never shows; a form posted without its CSRF value is refused; every
page carries the CSP. A screenshot of each page is kept under var/test-artifacts/.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from playwright.async_api import BrowserContext, Page, async_playwright
from prometheus_client import CollectorRegistry

from tests.support import make_config
from webgateway.addresses import parse_hostport
from webgateway.apiservice import ApiService
from webgateway.dnsname import new_challenge_label
from webgateway.model import Certificate, CertState, Domain, Name
from webgateway.sqlite_store import SqliteStore
from webgateway.tokens import hash_token, new_token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium")


@dataclass
class Site:
    url: str
    admin: str
    alice: str
    bob: str
    not_after: dt.datetime


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    cfg = make_config(tmp_path)
    store = SqliteStore(cfg.store.path)
    await store.open()
    tokens = {}
    for owner in ("alice", "bob"):
        tokens[owner] = new_token()
        await store.create_owner(owner, hash_token(tokens[owner]))
    bob_id = next(i for i, n in (await store.owner_names()).items() if n == "bob")
    await store.put_name(Name("bobsite", bob_id, (parse_hostport("10.9.9.9:80"),)), 10)
    await store.put_domain(
        Domain("shop.bob.test", "bobsite", bob_id, new_challenge_label()), 10
    )
    # the zone certificate as certd would leave it: a real PEM from a test CA
    not_after = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60, hours=1)).replace(microsecond=0)
    ca = trustme.CA(organization_name="Dashboard Test CA")
    leaf = ca.issue_cert("gw.test", "*.gw.test", not_after=not_after)
    pem = tmp_path / "zone.pem"
    leaf.cert_chain_pems[0].write_to_path(str(pem))
    await store.put_certificate(Certificate(
        "zone", ("gw.test", "*.gw.test"), CertState.VALID, str(pem), str(tmp_path / "k"),
        not_before=time.time() - 3600, not_after=not_after.timestamp(),
        renew_at=not_after.timestamp() - 20 * 86400))
    svc = ApiService(cfg, store, CollectorRegistry())
    await svc.start()
    admin = cfg.api.admin_token_file.read_text().strip()
    try:
        yield Site(f"http://127.0.0.1:{cfg.api.listen.port}", admin, tokens["alice"],
                   tokens["bob"], not_after)
    finally:
        await svc.stop()
        await store.close()


async def signed_in(ctx: BrowserContext, url: str, token: str) -> Page:
    """A new page of ``ctx`` signed in with ``token`` through the sign-in form."""
    page = await ctx.new_page()
    await page.goto(url + "/")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#who")
    return page


async def test_owner_signs_in_adds_a_name_sees_expiry_and_signs_out(site: Site) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
            page = await ctx.new_page()
            resp = await page.goto(site.url + "/")
            assert resp is not None and resp.status == 200
            csp = resp.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["referrer-policy"] == "no-referrer"
            await page.screenshot(path=str(ARTIFACTS / "dashboard-1-sign-in.png"), full_page=True)

            # a wrong token is refused on the page, not with a traceback
            await page.fill("#token", "wg_not-a-real-token")
            await page.click("button[type=submit]")
            assert "token is not valid" in await page.inner_text("main")

            await page.fill("#token", site.alice)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#who")
            assert await page.inner_text("#who") == "alice"

            # the session cookie is HttpOnly, SameSite=Strict and is not the token
            cookies = {c["name"]: c for c in await ctx.cookies()}
            sess = cookies["wg_session"]
            assert sess["httpOnly"] and sess["sameSite"] == "Strict"
            assert site.alice not in sess["value"] and len(sess["value"]) >= 40
            storage = await page.evaluate(
                "() => JSON.stringify([Object.keys(localStorage), Object.keys(sessionStorage)])")
            assert storage == "[[],[]]"
            assert site.alice not in await page.content()

            # add a name from the page and see it listed
            await page.fill("#label", "web")
            await page.fill("#backends", "10.1.2.3:80, [fd00::5]:8080")
            await page.click("form[action='/names'] button")
            await page.wait_for_selector("text=web.gw.test added")
            names = await page.inner_text("#names table")
            assert "web.gw.test" in names and "10.1.2.3:80" in names and "[fd00::5]:8080" in names
            assert "terminate" in names

            # the certificate's expiry as a date and days left, and its issuer
            certs = await page.inner_text("#certificates")
            assert site.not_after.date().isoformat() in certs
            assert re.search(r"\b60\b", certs), certs
            assert "*.gw.test" in certs and "valid" in certs
            # bob's data is nowhere on alice's page
            body = await page.content()
            assert "bobsite" not in body and "shop.bob.test" not in body
            await page.screenshot(path=str(ARTIFACTS / "dashboard-2-owner.png"), full_page=True)

            # a form post without (or with a wrong) CSRF value is refused
            for form in ({"label": "evil", "backends": "10.6.6.6:80"},
                         {"label": "evil", "backends": "10.6.6.6:80", "csrf": "guess"}):
                r = await page.request.post(site.url + "/names", form=form, max_redirects=0)
                assert r.status == 403, r.status
                assert "content-security-policy" in r.headers
            await page.reload()
            assert "evil" not in await page.inner_text("#names")

            # sign out: back to the sign-in page, and the old session id is dead
            await page.click("form[action='/logout'] button")
            await page.wait_for_selector("#token")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-3-signed-out.png"),
                                  full_page=True)
            await ctx.add_cookies([{"name": "wg_session", "value": sess["value"],
                                    "url": site.url}])
            await page.goto(site.url + "/")
            assert await page.query_selector("#token") is not None
            await ctx.close()

            # bob sees his own name and the CNAMEs his domain still needs, not alice's name
            ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
            page = await signed_in(ctx, site.url, site.bob)
            text = await page.inner_text("main")
            assert "bobsite.gw.test" in text and "web.gw.test" not in text
            assert "_acme-challenge.shop.bob.test." in text and "bobsite.gw.test." in text
            assert "waiting for the DNS records" in text
            await ctx.close()

            # the admin sees every owner's names, each with its owner
            ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
            page = await signed_in(ctx, site.url, site.admin)
            rows = await page.inner_text("#names table")
            assert re.search(r"bobsite\.gw\.test\s+bob", rows), rows
            assert re.search(r"web\.gw\.test\s+alice", rows), rows
            assert await page.query_selector("form[action='/names']") is None
            await page.screenshot(path=str(ARTIFACTS / "dashboard-4-admin.png"), full_page=True)
            await ctx.close()
        finally:
            await browser.close()
