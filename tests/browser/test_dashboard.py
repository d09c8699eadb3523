"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

The API and the proxy run in this process on one registry, as ``webgateway run`` has them.
An owner signs in, adds a name, sees it and the certificate's expiry, signs out; a
second owner's data never shows; a form posted without its CSRF value is refused; every
page carries the CSP; traffic made with curl through the proxy shows on the owner's page.
A screenshot of each page is kept under var/test-artifacts/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from playwright.async_api import BrowserContext, Page, async_playwright

from tests.integration.proxy_harness import BackendServer, run
from tests.support import cert_row, make_config, services
from webgateway.addresses import parse_hostport
from webgateway.config import Config
from webgateway.dashboard import size_of
from webgateway.dnsname import new_challenge_label
from webgateway.model import Domain, Name
from webgateway.store import Store
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
    https_port: int
    ca_file: Path
    access_log: Path


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    cfg = make_config(tmp_path, log={"access_log": "access.log"})
    async with services(cfg, "proxy", "api") as running:
        yield await _seeded(running.store, cfg, tmp_path)


async def _seeded(store: Store, cfg: Config, tmp_path: Path) -> Site:
    """Two owners, bob's name and pending domain, the zone certificate as certd leaves it."""
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
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    await store.put_certificate(cert_row(
        "zone", ("gw.test", "*.gw.test"), leaf, not_before=time.time() - 3600,
        not_after=not_after.timestamp(), renew_at=not_after.timestamp() - 20 * 86400))
    admin = cfg.api.admin_token_file.read_text().strip()
    assert cfg.log.access_log is not None
    return Site(f"http://127.0.0.1:{cfg.api.listen.port}", admin, tokens["alice"],
                tokens["bob"], not_after, cfg.proxy.https_listen[0].port,
                tmp_path / "ca.pem", cfg.log.access_log)


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


async def _curl(site: Site, host: str, path: str) -> bytes:
    rc, out, err = await run("curl", "-sS", "--max-time", "10", "--cacert", str(site.ca_file),
                             "--resolve", f"{host}:{site.https_port}:127.0.0.1",
                             f"https://{host}:{site.https_port}{path}")
    assert rc == 0, err
    return out


async def _names(site: Site, token: str) -> dict[str, dict[str, object]]:
    """``GET /v1/names`` as ``token`` (through curl: a real client), by label."""
    rc, out, err = await run("curl", "-sS", "-H", f"Authorization: Bearer {token}",
                             site.url + "/v1/names")
    assert rc == 0, err
    return {n["name"]: n for n in json.loads(out)["names"]}


async def test_owner_sees_open_connections_and_the_last_hours_traffic(site: Site) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    backend = BackendServer("live", "127.0.0.1")
    await backend.start()
    held: asyncio.StreamWriter | None = None
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
                page = await signed_in(ctx, site.url, site.alice)
                await page.fill("#label", "live")
                await page.fill("#backends", backend.addr)
                await page.click("form[action='/names'] button")
                await page.wait_for_selector("text=live.gw.test added")
                row = page.locator("#names tr", has_text="live.gw.test")
                assert await row.locator("td.now").inner_text() == "0"
                assert "0 connections" in await row.locator("td.traffic").inner_text()

                # real traffic through the proxy: four requests that end, one left open
                host = "live.gw.test"
                for _ in range(100):  # bounded: the proxy follows the store by polling
                    rc, _, _ = await run("curl", "-sSf", "-o", "/dev/null", "--cacert",
                                         str(site.ca_file), "--resolve",
                                         f"{host}:{site.https_port}:127.0.0.1",
                                         f"https://{host}:{site.https_port}/a")
                    if rc == 0:
                        break
                    await asyncio.sleep(0.05)
                assert await _curl(site, host, "/a") == b"live /a\n"
                assert len(await _curl(site, host, "/big/150000")) == 150_000
                assert len(await _curl(site, host, "/big/20000")) == 20_000
                ctx_tls = ssl.create_default_context(cafile=str(site.ca_file))
                reader, held = await asyncio.open_connection(
                    "127.0.0.1", site.https_port, ssl=ctx_tls, server_hostname=host)
                held.write(f"GET /held HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                assert (await reader.readuntil(b"live /held\n")).startswith(b"HTTP/1.1 200")

                # the API says what the access log says, and the page shows the same
                await asyncio.sleep(1.1)  # the access log's flush delay; a read samples anew
                ended = [json.loads(x) for x in site.access_log.read_text().splitlines()]
                ended = [e for e in ended if e["route"] == "live" and e["outcome"] == "ok"]
                assert len(ended) == 4  # the probe above ended too
                traffic = (await _names(site, site.alice))["live"]["traffic"]
                assert traffic == {"connections_now": 1, "last_hour": {
                    "connections": 4, "bytes_in": sum(e["bytes_in"] for e in ended),
                    "bytes_out": sum(e["bytes_out"] for e in ended)}}, traffic
                await page.reload()
                row = page.locator("#names tr", has_text="live.gw.test")
                assert await row.locator("td.now").inner_text() == "1"
                shown = await row.locator("td.traffic").inner_text()
                last = traffic["last_hour"]
                assert isinstance(last, dict) and last["bytes_out"] > 170_000
                assert "4 connections" in shown, shown
                assert f"{size_of(last['bytes_in'])} in" in shown, shown
                assert f"{size_of(last['bytes_out'])} out" in shown, shown
                await page.screenshot(path=str(ARTIFACTS / "dashboard-5-traffic.png"),
                                      full_page=True)
                await ctx.close()

                # bob sees neither alice's name nor its numbers, in the page or the API
                ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
                page = await signed_in(ctx, site.url, site.bob)
                text = await page.inner_text("#names")
                assert "live.gw.test" not in text and "bobsite.gw.test" in text
                row = page.locator("#names tr", has_text="bobsite.gw.test")
                assert await row.locator("td.now").inner_text() == "0"
                assert set(await _names(site, site.bob)) == {"bobsite"}
                await ctx.close()

                # the admin sees alice's numbers beside her name
                ctx = await browser.new_context(viewport={"width": 1200, "height": 800})
                page = await signed_in(ctx, site.url, site.admin)
                row = page.locator("#names tr", has_text="live.gw.test")
                assert await row.locator("td.now").inner_text() == "1"
                assert "4 connections" in await row.locator("td.traffic").inner_text()
                await ctx.close()
            finally:
                await browser.close()
    finally:
        if held is not None:
            held.close()
        await backend.close()
