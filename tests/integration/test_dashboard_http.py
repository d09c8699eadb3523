"""The dashboard's forms under hostile and clumsy input, over real HTTP (no browser needed)."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from tests.support import make_config
from webgateway.apiservice import ApiService
from webgateway.sqlite_store import SqliteStore
from webgateway.tokens import hash_token, new_token


@dataclass
class Site:
    url: str
    admin: str
    alice: str
    store: SqliteStore


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    cfg = make_config(tmp_path, api={"auth_failures_per_minute": 5})
    store = SqliteStore(cfg.store.path)
    await store.open()
    alice = new_token()
    await store.create_owner("alice", hash_token(alice))
    svc = ApiService(cfg, store, CollectorRegistry())
    await svc.start()
    try:
        yield Site(f"http://127.0.0.1:{cfg.api.listen.port}",
                   cfg.api.admin_token_file.read_text().strip(), alice, store)
    finally:
        await svc.stop()
        await store.close()


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


async def _sign_in(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    async with http.get(url + "/") as r:
        csrf = _csrf(await r.text())
    async with http.post(url + "/login", data={"csrf": csrf, "token": token}) as r:
        return r.status, await r.text()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_sign_in_needs_the_forms_csrf_value(site: Site) -> None:
    async with _session() as http:
        # no visit first (no per-visit value): a cross-site sign-in is refused
        async with http.post(site.url + "/login", data={"token": site.alice}) as r:
            assert r.status == 403 and "expired" in await r.text()
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        async with http.get(site.url + "/") as r:
            _csrf(await r.text())
        async with http.post(site.url + "/login", data={"token": site.alice, "csrf": "x"}) as r:
            assert r.status == 403
        async with http.post(site.url + "/login", data={"csrf": "x"}) as r:
            assert r.status == 403
        status, page = await _sign_in(http, site.url, site.alice)
        assert status == 200 and 'id="who">alice<' in page


async def test_sign_in_shares_the_apis_failed_auth_limiter(site: Site) -> None:
    async with _session() as http:
        for _ in range(5):
            status, page = await _sign_in(http, site.url, "wg_wrong")
            assert status == 401 and "token is not valid" in page
        status, page = await _sign_in(http, site.url, "wg_wrong")
        assert status == 429 and "too many failed authentications" in page
        async with http.get(site.url + "/v1/names",
                            headers={"Authorization": "Bearer wg_wrong"}) as r:
            assert r.status == 429  # the API counts the same failures
        # as in the API, a valid token is never locked out by a guesser at the same address
        status, page = await _sign_in(http, site.url, site.alice)
        assert status == 200 and 'id="who">alice<' in page


async def test_hostile_name_input_is_refused_and_escaped(site: Site) -> None:
    async with _session() as http:
        _status, page = await _sign_in(http, site.url, site.alice)
        csrf = _csrf(page)
        cases = [
            ({"label": "<script>alert(1)</script>", "backends": "10.0.0.1:80"}, "use only a-z"),
            ({"label": "ok", "backends": "<img src=x onerror=alert(1)>"},
             "expected 'address:port'"),
            ({"label": "ok", "backends": ""}, "1 to 16"),
            ({"label": "ok", "backends": "10.0.0.1:80", "tls": "rot13"}, "terminate"),
            ({"label": "www", "backends": "10.0.0.1:80"}, "reserved"),
            ({"backends": "10.0.0.1:80"}, "1 to 63 characters"),
            ({"label": "ok", "backends": " ".join(f"10.0.0.{i}:80" for i in range(40))}, "16"),
            ({"label": "\u00e9t\u00e9", "backends": "10.0.0.1:80"}, "use only a-z"),
        ]
        for form, expect in cases:
            async with http.post(site.url + "/names", data={**form, "csrf": csrf}) as r:
                assert r.status == 200, form  # back on the page after the redirect
                html = await r.text()
            assert "<script>alert" not in html and "<img src=x" not in html, form
            m = re.search(r'<p class="flash error" role="status">([^<]*)</p>', html)
            assert m and expect in html_lib.unescape(m.group(1)), (form, m and m.group(1))
        # bytes that are not UTF-8, sent as a form
        raw = f"csrf={csrf}&label=%FF%FE&backends=1".encode()
        async with http.post(site.url + "/names", data=raw,
                             headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status in (200, 400), r.status
            assert "Traceback" not in await r.text()
        assert await site.store.list_names() == []
        # a body over the API's limit is refused before it is parsed
        async with http.post(site.url + "/names",
                             data={"csrf": csrf, "label": "x" * 70_000}) as r:
            assert r.status == 413


async def test_forms_need_a_session_and_the_admin_adds_no_names(site: Site) -> None:
    async with _session() as http:
        async with http.post(site.url + "/names",
                             data={"label": "a", "backends": "10.0.0.1:80"}) as r:
            assert r.status == 401 and 'id="token"' in await r.text()
        async with http.post(site.url + "/logout", data={}) as r:
            assert r.status == 401
        _status, page = await _sign_in(http, site.url, site.admin)
        assert 'id="who">admin<' in page and 'action="/names"' not in page
        async with http.post(site.url + "/names", data={
                "csrf": _csrf(page), "label": "a", "backends": "10.0.0.1:80"}) as r:
            assert "names belong to owners" in await r.text()
        assert await site.store.list_names() == []


async def test_a_changed_token_ends_its_sessions(site: Site) -> None:
    async with _session() as http:
        _status, page = await _sign_in(http, site.url, site.alice)
        assert 'id="who">alice<' in page
        await site.store.db.execute("UPDATE owners SET token_hash=? WHERE name='alice'",
                                    (hash_token(new_token()),))
        await site.store.db.commit()
        async with http.get(site.url + "/") as r:
            assert 'id="token"' in await r.text()


async def test_cookie_attributes(site: Site) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(site.url + "/") as r:
            csrf = _csrf(await r.text())
            login_cookie = r.cookies["wg_login"]
        async with http.post(site.url + "/login", allow_redirects=False,
                             data={"csrf": csrf, "token": site.alice},
                             cookies={"wg_login": login_cookie.value}) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            raw = next(v for v in r.headers.getall("Set-Cookie") if v.startswith("wg_session="))
    attrs = {a.strip().split("=")[0].lower() for a in raw.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs
    assert "samesite=strict" in raw.lower() and "secure" not in attrs  # plain HTTP here
    assert site.alice not in raw
