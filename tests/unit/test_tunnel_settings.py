"""The node's settings: flags and TOML merged, every bad value a one-line ``KEY: reason``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunnel.settings import Endpoint, load, parse_endpoint
from webgateway.config import ConfigError

BASE = {"gateway": ["gw.example.com"], "name": "alice", "token": "wg_abc",
        "to": "127.0.0.1:8080"}


def flags(**kw: Any) -> dict[str, Any]:
    return {**BASE, **kw}


def test_defaults_and_sni_from_the_gateway_name() -> None:
    s = load(flags())
    assert s.gateways == (Endpoint("gw.example.com", 443),)
    assert s.server_name == "gw.example.com" and s.ca is None
    assert (s.pool, s.low_water, s.shrink_after, s.preconnect) == (8, 4, 60.0, 2.0)
    assert load(flags(pool=1)).low_water == 1  # the default never exceeds the pool
    assert "wg_abc" not in repr(s)


@pytest.mark.parametrize(("text", "want"), [
    ("gw.example.com:8443", Endpoint("gw.example.com", 8443)),
    ("192.0.2.1", Endpoint("192.0.2.1", 443)),
    ("[2001:db8::1]:444", Endpoint("2001:db8::1", 444)),
    ("[2001:db8::1]", Endpoint("2001:db8::1", 443)),
    ("localhost:80", Endpoint("localhost", 80)),
])
def test_endpoints(text: str, want: Endpoint) -> None:
    assert parse_endpoint(text, 443) == want


@pytest.mark.parametrize(("kw", "key", "words"), [
    ({"gateway": []}, "gateway", "at least one"),
    ({"gateway": ["2001:db8::1"]}, "gateway", "[addr]:port"),
    ({"gateway": ["gw.example.com:99999"]}, "gateway", "1 to 65535"),
    ({"gateway": ["a.example.com", "a.example.com"]}, "gateway", "twice"),
    ({"gateway": ["192.0.2.1"]}, "server_name", "--server-name"),
    ({"gateway": ["a.example.com", "b.example.com"]}, "server_name", "different"),
    ({"name": "Not_a_label"}, "name", ""),
    ({"token": " "}, "token", "tunnel token"),
    ({"token": "wg_\u00e9"}, "token", "printable ASCII"),
    ({"to": "127.0.0.1"}, "to", "port is required"),
    ({"pool": 0}, "pool", "1 to 64"),
    ({"pool": True}, "pool", "1 to 64"),
    ({"low_water": 0}, "low_water", "1 to 8"),
    ({"pool": 3, "low_water": 4}, "low_water", "at most pool"),
    ({"shrink_after": -1}, "shrink_after", "0 (never shrink)"),
    ({"shrink_after": "1m"}, "shrink_after", "seconds"),
    ({"preconnect": 31}, "preconnect", "0 (no spare connection) to 30"),
    ({"preconnect": True}, "preconnect", "seconds"),
    ({"ca": "/nonexistent/ca.pem"}, "ca", "not a readable file"),
])
def test_bad_values_name_the_key(kw: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(flags(**kw))
    assert e.value.key == key and words in e.value.reason


def test_toml_file_relative_paths_and_flags_win(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("wg_from_file\n")
    (tmp_path / "ca.pem").write_text("x")
    f = tmp_path / "node.toml"
    f.write_text('gateway = ["192.0.2.1:8443", "192.0.2.2"]\nname = "alice"\n'
                 'token_file = "tok"\nto = "[::1]:8080"\nca = "ca.pem"\n'
                 'server_name = "gw.example.com"\npool = 3\nlow_water = 3\nshrink_after = 0\n'
                 'preconnect = 0.5\n')
    s = load({}, f)
    assert s.token == "wg_from_file" and s.ca == tmp_path / "ca.pem" and s.pool == 3
    assert s.low_water == 3 and s.shrink_after == 0.0 and s.preconnect == 0.5
    assert [str(g) for g in s.gateways] == ["192.0.2.1:8443", "192.0.2.2:443"]
    assert load({"token": "wg_flag", "pool": 5}, f).token == "wg_flag"
    f.write_text('gateway = "gw.example.com"\nname = "alice"\ntoken = "t"\nto = "a:1"\nx = 1\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load({}, f)
    f.write_text("gateway = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({}, f)
