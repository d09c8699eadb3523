"""The owners' API over real HTTP on loopback: authorization matrix and malformed input."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.support import make_config, store_rows
from webgateway.apiservice import ApiService
from webgateway.model import Certificate, CertState
from webgateway.openapi import OPENAPI
from webgateway.sqlite_store import SqliteStore
from webgateway.store import Store
from webgateway.storefactory import open_store
from webgateway.tokens import hash_token
from webgateway.when import parse_rfc3339


@dataclass
class Gw:
    url: str
    admin: str
    http: aiohttp.ClientSession
    store: Store
    tmp: Path
    routes: web.UrlDispatcher

    async def call(self, method: str, path: str, token: str | None = None,
                   body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        kw: dict[str, Any] = {"headers": h}
        if raw is not None:
            kw["data"] = raw
            h.setdefault("Content-Type", "application/json")
        elif body is not None:
            kw["json"] = body
        async with self.http.request(method, self.url + path, **kw) as r:
            data = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, data

    async def owner(self, name: str) -> str:
        status, data = await self.call("POST", "/v1/owners", self.admin, {"name": name})
        assert status == 201, data
        return str(data["token"])


@pytest.fixture
async def gw(tmp_path: Path, store_section: dict[str, Any]) -> AsyncIterator[Gw]:
    cfg = make_config(tmp_path, api={"max_names_per_owner": 3, "auth_failures_per_minute": 20},
                      store=store_section)
    store = await open_store(cfg.store)
    svc = ApiService(cfg, store, CollectorRegistry())
    await svc.start()
    admin = cfg.api.admin_token_file.read_text().strip()
    async with aiohttp.ClientSession() as http:
        yield Gw(f"http://127.0.0.1:{cfg.api.listen.port}", admin, http, store, tmp_path,
                 svc.api.app.router)
    await svc.stop()
    await store.close()


async def test_admin_token_file_is_private(gw: Gw) -> None:
    f = gw.tmp / "admin.token"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert f.read_text().startswith("wg_")


async def test_owner_lifecycle_and_token_is_hashed(gw: Gw) -> None:
    token = await gw.owner("alice")
    assert token.startswith("wg_")
    ((stored,),) = await store_rows(gw.store, "SELECT token_hash FROM owners")
    assert stored != token and token not in stored and len(stored) == 64
    assert (await gw.call("POST", "/v1/owners", gw.admin, {"name": "alice"}))[0] == 409
    assert (await gw.call("POST", "/v1/owners", token, {"name": "eve"}))[0] == 403
    assert (await gw.call("POST", "/v1/owners", None, {"name": "eve"}))[0] == 401


async def test_name_put_get_list_delete(gw: Gw) -> None:
    t = await gw.owner("alice")
    st, n = await gw.call("PUT", "/v1/names/alice", t, {"backends": ["[fd00::5]:8080"]})
    assert st == 201, n
    assert n["fqdn"] == "alice.gw.test" and n["backends"] == ["[fd00::5]:8080"]
    assert n["tls"] == "terminate" and n["certificate"]["state"] == "pending"
    st, n = await gw.call("PUT", "/v1/names/alice", t,
                          {"backends": ["10.1.2.3:80", "[fd00::6]:80"], "tls": "passthrough"})
    assert st == 200 and n["tls"] == "passthrough" and n["certificate"] is None
    st, lst = await gw.call("GET", "/v1/names", t)
    assert st == 200 and [x["name"] for x in lst["names"]] == ["alice"]
    assert (await gw.call("GET", "/v1/names/alice", t))[1]["backends"] == ["10.1.2.3:80",
                                                                            "[fd00::6]:80"]
    assert (await gw.call("DELETE", "/v1/names/alice", t))[0] == 204
    assert (await gw.call("GET", "/v1/names/alice", t))[0] == 404


async def test_authorization_matrix(gw: Gw) -> None:
    a, b = await gw.owner("a"), await gw.owner("b")
    assert (await gw.call("PUT", "/v1/names/aa", a, {"backends": ["10.0.0.1:80"]}))[0] == 201
    assert (await gw.call("PUT", "/v1/domains/shop.example.org", a, {"name": "aa"}))[0] == 201
    routes = [
        ("GET", "/v1/names/aa", None),
        ("PUT", "/v1/names/aa", {"backends": ["10.0.0.9:80"]}),
        ("DELETE", "/v1/names/aa", None),
        ("GET", "/v1/domains/shop.example.org", None),
        ("PUT", "/v1/domains/shop.example.org", {"name": "aa"}),
        ("DELETE", "/v1/domains/shop.example.org", None),
    ]
    # b cannot touch a's name (403 to overwrite), nor see or remove a's claim (404); b's
    # PUT of the domain with a's name is 404: a claim routes only to the claimant's names
    expect_b = {"GET": 404, "PUT": 403, "DELETE": 404}
    for method, path, body in routes:
        assert (await gw.call(method, path, None, body))[0] == 401, (method, path)
        assert (await gw.call(method, path, "wg_wrong", body))[0] in (401, 429), (method, path)
        st, err = await gw.call(method, path, b, body)
        want = 404 if path.startswith("/v1/domains") else expect_b[method]
        assert st == want, (method, path, st, err)
        assert set(err) == {"error", "detail"}
    # b's lists are empty, the admin sees everything but cannot write names
    assert (await gw.call("GET", "/v1/names", b))[1]["names"] == []
    assert (await gw.call("GET", "/v1/domains", b))[1]["domains"] == []
    assert len((await gw.call("GET", "/v1/names", gw.admin))[1]["names"]) == 1
    assert (await gw.call("GET", "/v1/names/aa", gw.admin))[0] == 200
    assert (await gw.call("PUT", "/v1/names/zz", gw.admin, {"backends": ["10.0.0.1:80"]}))[0] == 403
    # nothing of a's changed
    st, n = await gw.call("GET", "/v1/names/aa", a)
    assert st == 200 and n["backends"] == ["10.0.0.1:80"]
    assert (await gw.call("GET", "/v1/domains/shop.example.org", a))[0] == 200


async def test_failures_are_limited_not_valid_tokens(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await gw.owner("alice")
    guess = "wg_guess-" + "z" * 30
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        assert (await gw.call("GET", "/v1/names", guess))[0] == 401
    st, err = await gw.call("GET", "/v1/names", guess)
    assert st == 429 and "retry" in err["detail"]
    # the same address is over its failure limit, yet valid tokens still work ...
    assert (await gw.call("GET", "/v1/names", gw.admin))[0] == 200
    assert (await gw.call("GET", "/v1/names", alice))[0] == 200
    # ... and guesses keep getting 429
    assert (await gw.call("GET", "/v1/names", "wg_other"))[0] == 429
    refused = [r for r in caplog.records if r.getMessage().startswith("refused a token from")]
    assert len(refused) == 22 and all(r.levelno == logging.WARNING for r in refused)
    assert all("127.0.0.1" in r.getMessage() for r in refused)
    assert sum("over 20 failures" in r.getMessage() for r in refused) == 2
    await gw.call("GET", "/v1/names", headers={"Authorization": f"Basic {guess}"})
    assert "not a bearer token" in caplog.text
    for secret in (guess, guess[3:20], "wg_other", alice, gw.admin):
        assert secret not in caplog.text


async def test_owner_list_remove_and_token_rotation(gw: Gw) -> None:
    a, b = await gw.owner("a"), await gw.owner("b/slash")
    for label in ("aa", "ab"):
        assert (await gw.call("PUT", f"/v1/names/{label}", a, {"backends": ["10.0.0.1:80"]}))[
            0
        ] == 201
    assert (await gw.call("PUT", "/v1/domains/shop.example.org", a, {"name": "aa"}))[0] == 201
    assert (await gw.call("PUT", "/v1/names/bb", b, {"backends": ["10.0.0.2:80"]}))[0] == 201

    st, lst = await gw.call("GET", "/v1/owners", gw.admin)
    assert st == 200
    assert {o["name"]: (o["names"], o["domains"]) for o in lst["owners"]} == {
        "a": (2, 1), "b/slash": (1, 0)}
    assert (await gw.call("GET", "/v1/owners", a))[0] == 403
    assert (await gw.call("DELETE", "/v1/owners/b%2Fslash", a))[0] == 403

    # an owner rotates its own token: the old one stops at once, the new one works
    st, r = await gw.call("POST", "/v1/token/rotate", a)
    assert st == 200 and r["owner"] == "a" and r["token"].startswith("wg_")
    a2 = r["token"]
    assert (await gw.call("GET", "/v1/names", a))[0] == 401
    st, names = await gw.call("GET", "/v1/names", a2)
    assert st == 200 and [n["name"] for n in names["names"]] == ["aa", "ab"]
    st, err = await gw.call("POST", "/v1/token/rotate", a2, {"owner": "b/slash"})
    assert st == 403 and "admin" in err["detail"]
    # the admin rotates anyone's, and must say whose
    st, err = await gw.call("POST", "/v1/token/rotate", gw.admin)
    assert st == 422 and "admin_token_file" in err["detail"]
    assert (await gw.call("POST", "/v1/token/rotate", gw.admin, {"owner": "nobody"}))[0] == 404
    st, r = await gw.call("POST", "/v1/token/rotate", gw.admin, {"owner": "b/slash"})
    assert st == 200 and r["owner"] == "b/slash"
    assert (await gw.call("GET", "/v1/names", b))[0] == 401
    b2 = r["token"]
    assert (await gw.call("GET", "/v1/names/bb", b2))[0] == 200

    # removing an owner takes its names and domains and says which
    before = await gw.store.serial()
    st, r = await gw.call("DELETE", "/v1/owners/a", gw.admin)
    assert st == 200 and r == {"name": "a", "names": ["aa", "ab"], "domains": ["shop.example.org"]}
    cs = await gw.store.changes_since(before)
    assert cs is not None and cs.names == {"aa": None, "ab": None}
    assert cs.domains == {"shop.example.org": None}
    assert (await gw.call("GET", "/v1/names", a2))[0] == 401
    assert (await gw.call("DELETE", "/v1/owners/a", gw.admin))[0] == 404
    st, r = await gw.call("DELETE", "/v1/owners/b%2Fslash", gw.admin)
    assert st == 200 and r["names"] == ["bb"]
    assert (await gw.call("GET", "/v1/owners", gw.admin))[1] == {"owners": []}


BAD_NAMES = [
    ("PUT", "/v1/names/Alice", {"backends": ["10.0.0.1:80"]}, 422, "lower-case"),
    ("PUT", "/v1/names/-x", {"backends": ["10.0.0.1:80"]}, 422, "start or end"),
    ("PUT", "/v1/names/www", {"backends": ["10.0.0.1:80"]}, 422, "reserved"),
    ("PUT", "/v1/names/ns1", {"backends": ["10.0.0.1:80"]}, 422, "reserved"),
    ("PUT", "/v1/names/_acme-challenge", {"backends": ["10.0.0.1:80"]}, 422, "only a-z"),
    ("PUT", "/v1/names/ok", {}, 422, "'backends' is required"),
    ("PUT", "/v1/names/ok", {"backends": []}, 422, "1 to 16"),
    ("PUT", "/v1/names/ok", {"backends": "10.0.0.1:80"}, 422, "wrong type"),
    ("PUT", "/v1/names/ok", {"backends": ["fd00::5:80"]}, 422, "[addr]:port"),
    ("PUT", "/v1/names/ok", {"backends": ["10.0.0.1:0"]}, 422, "between 1 and 65535"),
    ("PUT", "/v1/names/ok", {"backends": ["example.com:80"]}, 422, "not an IPv4 or IPv6"),
    ("PUT", "/v1/names/ok", {"backends": ["224.0.0.1:80"]}, 422, "multicast"),
    ("PUT", "/v1/names/ok", {"backends": ["10.0.0.1:80", "10.0.0.1:80"]}, 422, "twice"),
    ("PUT", "/v1/names/ok", {"backends": ["10.0.0.1:80"], "tls": "maybe"}, 422, "passthrough"),
    ("PUT", "/v1/names/ok", {"backends": ["10.0.0.1:80"], "color": 1}, 422, "unknown field"),
    ("PUT", "/v1/names/ok", [1, 2], 400, "JSON object"),
    ("PUT", "/v1/domains/gw.test", {"name": "ok"}, 422, "overlaps"),
    ("PUT", "/v1/domains/a.gw.test", {"name": "ok"}, 422, "overlaps"),
    ("PUT", "/v1/domains/localhost", {"name": "ok"}, 422, "two labels"),
    ("PUT", "/v1/domains/shop.example.org", {"name": "nosuch"}, 404, "no name"),
    ("PUT", "/v1/domains/shop.example.org", {}, 422, "'name' is required"),
    ("PUT", "/v1/names/xn--abc", {"backends": ["10.0.0.1:80"]}, 422, "not a valid IDNA"),
    ("PUT", "/v1/names/ab--cd", {"backends": ["10.0.0.1:80"]}, 422, "reserved for IDNA"),
    *[("PUT", f"/v1/domains/shop.{tld}", {"name": "ok"}, 422, f".{tld} is a special-use")
      for tld in ("onion", "local", "localhost", "invalid", "home.arpa", "example", "internal",
                  "alt")],
    ("PUT", "/v1/domains/_dmarc.example.org", {"name": "ok"}, 422, "contains '_'"),
    ("PUT", "/v1/domains/a_b.example.org", {"name": "ok"}, 422, "contains '_'"),
    ("PUT", "/v1/domains/xn--abc.example.org", {"name": "ok"}, 422, "not a valid IDNA"),
    ("PUT", "/v1/domains/shop.xn--ls8h.org", {"name": "ok"}, 422, "not a valid IDNA"),
    ("GET", "/v1/nope", None, 404, "openapi"),
    ("PATCH", "/v1/names/ok", {}, 405, "not allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_NAMES)
async def test_bad_requests_say_what_to_fix(
    gw: Gw, method: str, path: str, body: Any, status: int, words: str
) -> None:
    t = await gw.owner("alice")
    st, err = await gw.call(method, path, t, body)
    assert st == status, err
    assert words in err["detail"], err


async def test_malformed_bodies(gw: Gw) -> None:
    t = await gw.owner("alice")
    st, err = await gw.call("PUT", "/v1/names/ok", t, raw=b"{not json")
    assert st == 400 and err["error"] == "bad_json"
    st, err = await gw.call("PUT", "/v1/names/ok", t, raw=b"\xff\xfe")
    assert st == 400
    st, err = await gw.call("PUT", "/v1/names/ok", t, raw=b"x" * 70000)
    assert st == 413 and "limited" in err["detail"]
    st, err = await gw.call("PUT", "/v1/names/ok", t, raw=b"{}",
                            headers={"Content-Type": "text/xml"})
    assert st == 415


@pytest.mark.parametrize("raw", [b"[" * 30_000 + b"]" * 30_000,
                                 b'{"a":' * 10_000 + b"1" + b"}" * 10_000])
async def test_deeply_nested_json_is_a_400(
    gw: Gw, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    t = await gw.owner("alice")
    assert len(raw) >= 60_000
    for method, path, token in (("PUT", "/v1/names/ok", t), ("POST", "/v1/owners", gw.admin),
                                ("POST", "/v1/token/rotate", t)):
        st, err = await gw.call(method, path, token, raw=raw)
        assert st == 400 and err["error"] == "bad_json", err
        assert "too deeply" in err["detail"]
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


async def test_an_update_changes_only_what_it_sends(gw: Gw) -> None:
    t = await gw.owner("alice")
    st, n = await gw.call("PUT", "/v1/names/vault", t, {"tls": "passthrough"})
    assert st == 422 and "'backends' is required to create" in n["detail"]
    st, n = await gw.call("PUT", "/v1/names/vault", t,
                          {"backends": ["10.0.0.7:443"], "tls": "passthrough",
                           "proxy_protocol": True})
    assert st == 201 and n["tls"] == "passthrough"
    # new backends only: TLS mode and PROXY protocol stay
    st, n = await gw.call("PUT", "/v1/names/vault", t, {"backends": ["10.0.0.8:443"]})
    assert st == 200, n
    assert (n["tls"], n["proxy_protocol"], n["http2"]) == ("passthrough", True, False)
    assert n["backends"] == ["10.0.0.8:443"]
    # one flag only: the backends stay
    st, n = await gw.call("PUT", "/v1/names/vault", t, {"http2": True})
    assert st == 200 and n["backends"] == ["10.0.0.8:443"] and n["http2"] is True
    assert n["tls"] == "passthrough"
    # switching back is explicit
    st, n = await gw.call("PUT", "/v1/names/vault", t, {"tls": "terminate"})
    assert st == 200 and n["tls"] == "terminate" and n["proxy_protocol"] is True
    # an empty update changes nothing, another owner's name is still 403, not merged
    st, n2 = await gw.call("PUT", "/v1/names/vault", t, {})
    assert st == 200 and {k: n2[k] for k in ("backends", "tls", "proxy_protocol", "http2")} \
        == {k: n[k] for k in ("backends", "tls", "proxy_protocol", "http2")}
    other = await gw.owner("mallory")
    st, err = await gw.call("PUT", "/v1/names/vault", other, {"tls": "passthrough"})
    assert st == 403 and "another owner" in err["detail"]
    assert (await gw.call("GET", "/v1/names/vault", t))[1]["tls"] == "terminate"


async def test_quota(gw: Gw) -> None:
    t = await gw.owner("q")
    for i in range(3):
        assert (await gw.call("PUT", f"/v1/names/n{i}", t, {"backends": ["10.0.0.1:80"]}))[0] == 201
    st, err = await gw.call("PUT", "/v1/names/n9", t, {"backends": ["10.0.0.1:80"]})
    assert st == 403 and "at most 3" in err["detail"]


async def test_domain_tells_the_cnames(gw: Gw) -> None:
    t = await gw.owner("alice")
    await gw.call("PUT", "/v1/names/alice", t, {"backends": ["[fd00::5]:80"]})
    st, d = await gw.call("PUT", "/v1/domains/Shop.Example.TEST", t, {"name": "alice"})
    assert st == 201
    assert d["fqdn"] == "shop.example.test" and d["state"] == "pending"
    recs = {r["name"]: r["target"] for r in d["records"]}
    assert recs["shop.example.test"] == "alice.gw.test"
    target = recs["_acme-challenge.shop.example.test"]
    assert target.endswith("._acme.gw.test") and len(target.split(".")[0]) > 10
    assert (await gw.call("DELETE", "/v1/domains/shop.example.test", t))[0] == 204
    assert (await gw.call("GET", "/v1/domains/shop.example.test", t))[0] == 404


async def test_claims_of_two_owners_then_the_proven_one_holds(gw: Gw) -> None:
    """Pending claims never block; each gets its own target; once one is verified (certd's
    verdict, here straight in the store) the other's GET says it was dropped and why, a
    third owner gets 409 naming the CNAME, and the admin sees and can remove every claim."""
    squatter, real, third = await gw.owner("squatter"), await gw.owner("real"), \
        await gw.owner("third")
    for t, label in ((squatter, "evil"), (real, "shop"), (third, "late")):
        assert (await gw.call("PUT", f"/v1/names/{label}", t,
                              {"backends": ["10.0.0.1:80"]}))[0] == 201
    st, first = await gw.call("PUT", "/v1/domains/shop.example.org", squatter, {"name": "evil"})
    assert st == 201 and first["state"] == "pending"
    st, second = await gw.call("PUT", "/v1/domains/shop.example.org", real, {"name": "shop"})
    assert st == 201 and second["state"] == "pending", second  # not blocked by the squatter
    targets = [{r["name"]: r["target"] for r in d["records"]}["_acme-challenge.shop.example.org"]
               for d in (first, second)]
    assert targets[0] != targets[1]
    # each owner sees its own claim only; a pending claim says when it expires
    st, mine = await gw.call("GET", "/v1/domains/shop.example.org", real)
    assert st == 200 and mine["name"] == "shop" and "owner" not in mine
    assert parse_rfc3339(mine["expires"]) - parse_rfc3339(mine["created"]) == 7 * 86400
    assert [d["name"] for d in (await gw.call("GET", "/v1/domains", squatter))[1]["domains"]] \
        == ["evil"]
    admin_view = (await gw.call("GET", "/v1/domains", gw.admin))[1]["domains"]
    assert sorted(d["name"] for d in admin_view) == ["evil", "shop"]
    assert sorted(d["owner"] for d in admin_view) == ["real", "squatter"]
    # the real owner's CNAME is seen: certd's verdict
    label = targets[1].split(".")[0]
    assert await gw.store.verify_claim(label, "CNAMEs in place")
    st, lost = await gw.call("GET", "/v1/domains/shop.example.org", squatter)
    assert st == 200 and lost["state"] == "dropped", lost
    assert "another owner proved control of shop.example.org first" in lost["detail"]
    assert lost["records"] == [] and lost["certificate"] is None and lost["expires"] is None
    st, won = await gw.call("GET", "/v1/domains/shop.example.org", real)
    assert won["state"] == "verified" and won["certificate"]["state"] == "pending"
    for t, label in ((third, "late"), (squatter, "evil")):
        st, err = await gw.call("PUT", "/v1/domains/shop.example.org", t, {"name": label})
        assert st == 409 and err["error"] == "conflict", err
        assert "CNAME _acme-challenge.shop.example.org pointed at" in err["detail"]
    # the holder may move its domain to another of its names (200, same target)
    await gw.call("PUT", "/v1/names/shop2", real, {"backends": ["10.0.0.2:80"]})
    st, moved = await gw.call("PUT", "/v1/domains/shop.example.org", real, {"name": "shop2"})
    assert st == 200 and moved["records"] == [
        {"name": "shop.example.org", "type": "CNAME", "target": "shop2.gw.test"},
        {"name": "_acme-challenge.shop.example.org", "type": "CNAME", "target": targets[1]}]
    # the operator's GET shows the holder; its DELETE removes every claim
    st, held = await gw.call("GET", "/v1/domains/shop.example.org", gw.admin)
    assert held["state"] == "verified" and held["name"] == "shop2"
    assert (await gw.call("DELETE", "/v1/domains/shop.example.org", gw.admin))[0] == 204
    assert (await gw.call("GET", "/v1/domains", gw.admin))[1]["domains"] == []
    assert (await gw.call("PUT", "/v1/domains/shop.example.org", third,
                          {"name": "late"}))[0] == 201


async def test_health_metrics_and_openapi_match_routes(gw: Gw) -> None:
    st, h = await gw.call("GET", "/healthz")
    assert st == 200 and h["status"] == "ok" and h["serial"] >= 1
    await gw.call("GET", "/v1/names", "wg_bad")
    st, text = await gw.call("GET", "/metrics", gw.admin)
    assert st == 200 and 'webgateway_api_requests_total{route="/v1/names",status="401"}' in text
    st, spec = await gw.call("GET", "/v1/openapi.json")
    assert st == 200 and spec == OPENAPI
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
                  if m != "parameters"}
    served = {(r.method, r.resource.canonical) for r in gw.routes.routes()
              if r.method != "HEAD" and r.resource is not None}
    # the dashboard's form targets and stylesheet are pages, not API
    served -= {("POST", "/login"), ("POST", "/logout"), ("POST", "/names"),
               ("GET", "/static/dashboard.css")}
    assert ("GET", "/v1/certificates") in served and ("GET", "/") in served
    assert documented == served
    for name in ("Name", "Domain", "Certificate"):  # every field a view gives is described
        assert spec["components"]["schemas"][name]["properties"]


async def test_metrics_need_the_admin_or_the_scrape_token_even_from_loopback(
        tmp_path: Path) -> None:
    cfg = make_config(tmp_path, api={"metrics_token_file": str(tmp_path / "metrics.token"),
                                     "auth_failures_per_minute": 3})
    store = await open_store(cfg.store)
    svc = ApiService(cfg, store, CollectorRegistry())
    await svc.start()
    try:
        token_file = tmp_path / "metrics.token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        scrape_token = token_file.read_text().strip()
        async with aiohttp.ClientSession() as http:
            gw = Gw(f"http://127.0.0.1:{cfg.api.listen.port}",
                    cfg.api.admin_token_file.read_text().strip(), http, store, tmp_path,
                    svc.api.app.router)
            owner = await gw.owner("alice")
            await gw.call("PUT", "/v1/names/web", owner, {"backends": ["10.0.0.1:80"]})
            for token in (gw.admin, scrape_token):
                st, text = await gw.call("GET", "/metrics", token)
                assert st == 200 and "webgateway_api_requests_total" in text
            st, body = await gw.call("GET", "/metrics")  # loopback, no token
            assert st == 401 and body["error"] == "unauthorized"
            st, body = await gw.call("GET", "/metrics", owner)
            assert st == 403 and "metrics_token_file" in body["detail"]
            st, body = await gw.call("GET", "/metrics", headers={"Authorization": "Basic eDp5"})
            assert st == 401
            # the scrape token opens /metrics and nothing else
            assert (await gw.call("GET", "/v1/names", scrape_token))[0] == 401
            assert (await gw.call("GET", "/v1/owners", scrape_token))[0] == 401
            # wrong tokens count in the failed-authentication limiter like anywhere else
            codes = [(await gw.call("GET", "/metrics", f"wg_guess{i}"))[0] for i in range(5)]
            assert codes[0] == 401 and codes[-1] == 429
            assert (await gw.call("GET", "/metrics", scrape_token))[0] == 200
    finally:
        await svc.stop()
        await store.close()


async def test_loopback_backends_are_refused_by_default(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, api={"allow_loopback_backends": False})
    store = await open_store(cfg.store)
    svc = ApiService(cfg, store, CollectorRegistry())
    await svc.start()
    try:
        admin = cfg.api.admin_token_file.read_text().strip()
        url = f"http://127.0.0.1:{cfg.api.listen.port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
            async with http.post(url + "/v1/owners", json={"name": "o"}) as r:
                tok = (await r.json())["token"]
            async with http.put(url + "/v1/names/x", json={"backends": ["127.0.0.1:22"]},
                                headers={"Authorization": f"Bearer {tok}"}) as r:
                assert r.status == 422 and "loopback" in (await r.json())["detail"]
    finally:
        await svc.stop()
        await store.close()


async def test_disk_full_is_a_clear_503_and_reads_keep_working(gw: Gw) -> None:
    t = await gw.owner("alice")
    assert (await gw.call("PUT", "/v1/names/keep", t, {"backends": ["10.0.0.1:80"]}))[0] == 201
    if not isinstance(gw.store, SqliteStore):
        pytest.skip("SQLite's disk-full path; PostgreSQL's outage is tested in test_fleet")
    # SQLITE_FULL, the same error a full disk gives: cap the file at its current size
    async with gw.store.db.execute("PRAGMA page_count") as cur:
        (pages,) = await cur.fetchone()  # type: ignore[misc]
    await gw.store.db.execute(f"PRAGMA max_page_count = {pages}")
    st, err = 0, {}
    for i in range(500):  # fill the free pages, then the next write must fail
        st, err = await gw.call("POST", "/v1/owners", gw.admin, {"name": f"filler-{i:04d}"})
        if st != 201:
            break
    assert st == 503, err
    assert err["error"] == "store_unavailable" and "full" in err["detail"]
    st, n = await gw.call("GET", "/v1/names/keep", t)
    assert st == 200 and n["backends"] == ["10.0.0.1:80"]
    st, h = await gw.call("GET", "/healthz")
    assert st == 200 and h["status"] == "ok"


async def test_certificates_listing_is_scoped_and_uses_dates(gw: Gw) -> None:
    a, b = await gw.owner("a"), await gw.owner("b")
    for token, label, fqdn in ((a, "aa", "shop.a.test"), (b, "bb", "shop.b.test")):
        assert (await gw.call("PUT", f"/v1/names/{label}", token,
                              {"backends": ["10.0.0.1:80"]}))[0] == 201
        st, claim = await gw.call("PUT", f"/v1/domains/{fqdn}", token, {"name": label})
        assert st == 201  # and certd saw its CNAMEs: the claim holds the domain
        assert await gw.store.verify_claim(claim["records"][1]["target"].split(".")[0], "ok")
    now = time.time()
    for cid, days in (("zone", 30.5), ("shop.a.test", 80.2), ("shop.b.test", 5.9)):
        await gw.store.put_certificate(Certificate(
            cid, (cid,), CertState.VALID, not_before=now, not_after=now + days * 86400,
            last_error="" if cid != "shop.b.test" else "rateLimited: try later"))
    st, out = await gw.call("GET", "/v1/certificates", a)
    assert st == 200 and [c["id"] for c in out["certificates"]] == ["shop.a.test", "zone"]
    zone = out["certificates"][1]
    assert zone["days_left"] == 30 and zone["state"] == "valid"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", zone["not_after"])
    assert abs(datetime.fromisoformat(zone["not_after"]).timestamp() - (now + 30.5 * 86400)) < 1
    st, out = await gw.call("GET", "/v1/certificates", gw.admin)
    assert [c["id"] for c in out["certificates"]] == ["shop.a.test", "shop.b.test", "zone"]
    assert out["certificates"][1]["last_error"] == "rateLimited: try later"
    assert (await gw.call("GET", "/v1/certificates"))[0] == 401
    # every field of the views is described in the OpenAPI schemas
    schemas = OPENAPI["components"]["schemas"]
    st, names = await gw.call("GET", "/v1/names", gw.admin)
    assert names["names"][0]["owner"] in ("a", "b")
    st, domains = await gw.call("GET", "/v1/domains", gw.admin)
    for view, schema in ((names["names"][0], "Name"), (domains["domains"][0], "Domain"),
                         (zone, "Certificate")):
        assert set(view) <= set(schemas[schema]["properties"]), (schema, view)
    st, mine = await gw.call("GET", "/v1/names", a)
    assert "owner" not in mine["names"][0]


async def test_tunnel_name_token_shown_once_hashed_rotated_revoked(gw: Gw) -> None:
    t, other = await gw.owner("alice"), await gw.owner("bob")
    st, n = await gw.call("PUT", "/v1/names/hidden", t, {"tunnel": True})
    assert st == 201 and n["tunnel"] is True and n["backends"] == []
    token = n["tunnel_token"]
    assert token.startswith("wg_")
    stored = await gw.store.get_name("hidden")
    assert stored is not None and stored.tunnel_token_hash == hash_token(token)
    assert token not in str(await gw.call("GET", "/v1/names/hidden", t))
    # an update keeps the token and does not show it again; backends may be added
    st, n = await gw.call("PUT", "/v1/names/hidden", t, {"backends": ["10.1.2.3:80"]})
    assert st == 200 and "tunnel_token" not in n and n["backends"] == ["10.1.2.3:80"]
    assert n["tunnel"] is True
    assert (await gw.store.get_name("hidden")).tunnel_token_hash == hash_token(token)  # type: ignore[union-attr]
    # rotation: a new token, the old hash gone; only the owner may rotate
    assert (await gw.call("POST", "/v1/names/hidden/tunnel-token", other))[0] == 404
    st, r = await gw.call("POST", "/v1/names/hidden/tunnel-token", t)
    assert st == 200 and r["tunnel_token"] != token
    assert (await gw.store.get_name("hidden")).tunnel_token_hash == hash_token(r["tunnel_token"])  # type: ignore[union-attr]
    # a plain name has no token and cannot rotate one; it still needs backends
    st, e = await gw.call("PUT", "/v1/names/plain", t, {"tls": "terminate"})
    assert st == 422 and e["error"] == "missing_field" and "tunnel" in e["detail"]
    assert (await gw.call("PUT", "/v1/names/plain", t, {"backends": ["10.1.2.3:80"]}))[0] == 201
    st, e = await gw.call("POST", "/v1/names/plain/tunnel-token", t)
    assert st == 409 and "not a tunnel name" in e["detail"]
    st, e = await gw.call("PUT", "/v1/names/plain", t, {"backends": []})
    assert st == 422 and "tunnel" in e["detail"]
    # turning tunnel off drops the token; removing the name revokes it
    st, n = await gw.call("PUT", "/v1/names/hidden", t, {"tunnel": False})
    assert st == 200 and n["tunnel"] is False
    assert (await gw.store.get_name("hidden")).tunnel_token_hash == ""  # type: ignore[union-attr]
    st, n = await gw.call("PUT", "/v1/names/hidden", t, {"tunnel": True})
    assert "tunnel_token" in n  # back on: a fresh token
    assert (await gw.call("DELETE", "/v1/names/hidden", t))[0] == 204
    assert await gw.store.get_name("hidden") is None
    assert (await gw.call("PUT", "/v1/names/x", t, {"tunnel": "yes"}))[0] == 422
