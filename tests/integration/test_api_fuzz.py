"""Hypothesis against the live API: hostile labels, domains and bodies never get a 5xx,
and nothing invalid is ever stored."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway import cli, running, write_config
from webgateway.dnsname import check_domain, check_label


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    cfg = write_config(tmp, api={"max_names_per_owner": 100000, "max_domains_per_owner": 100000})
    with running(cfg) as (_, url):
        admin = (tmp / "admin.token").read_text().strip()
        token = cli("owner", "add", "fuzzer", env={"WEBGATEWAY_URL": url,
                                                  "WEBGATEWAY_TOKEN": admin}).stdout.strip()
        yield url, token


def call(url: str, token: str, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


labels = st.one_of(
    st.text(alphabet="abcxyz019-_.AZé\x00 %/", min_size=0, max_size=70),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,61}[a-z0-9]", fullmatch=True),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.fixed_dictionaries({"backends": st.lists(st.text(max_size=30), max_size=3)},
                          optional={"tls": st.text(max_size=12), "http2": json_values}),
    json_values,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(label=labels, body=bodies)
def test_names_fuzz(api: tuple[str, str], label: str, body: Any) -> None:
    url, token = api
    path = "/v1/names/" + urllib.parse.quote(label, safe="")
    if not label or label in (".", ".."):
        return  # not a name route at all
    status, data = call(url, token, "PUT", path, json.dumps(body).encode())
    assert status < 500, data
    assert set(data) >= ({"error", "detail"} if status >= 400 else {"name"})
    if status in (200, 201):
        assert check_label(label) == label == data["name"]


@FUZZ
@given(fqdn=st.text(alphabet="abc.-_0Zé\x00/", min_size=1, max_size=80))
def test_domains_fuzz(api: tuple[str, str], fqdn: str) -> None:
    url, token = api
    call(url, token, "PUT", "/v1/names/target", json.dumps({"backends": ["10.0.0.1:80"]}).encode())
    path = "/v1/domains/" + urllib.parse.quote(fqdn, safe="")
    if fqdn.strip(".") in ("", "."):
        return
    status, data = call(url, token, "PUT", path, json.dumps({"name": "target"}).encode())
    assert status < 500, data
    if status in (200, 201):
        assert data["fqdn"] == check_domain(fqdn)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_raw_bodies_fuzz(api: tuple[str, str], raw: bytes) -> None:
    url, token = api
    status, data = call(url, token, "PUT", "/v1/names/rawbody", raw)
    assert status < 500, data
