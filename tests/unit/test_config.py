"""Config loading: every bad value stops start-up with the key and the reason."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support import raw_config
from webgateway.config import ConfigError, _secret_file, load_config, parse_config

GOOD = """
[zone]
name = "GW.Example.com."
gateway_ipv4 = ["203.0.113.10"]
gateway_ipv6 = ["2001:db8::10"]
nameservers = { "ns1.gw.example.com" = ["203.0.113.10"] }
ttl = 300
negative_ttl = 30
[dns]
listen = ["127.0.0.1:5353", "[::1]:5353"]
[acme]
directory = "https://127.0.0.1:14000/dir"
email = "ops@example.com"
ca_bundle = "pebble.minica.pem"
resolver = "127.0.0.53:53"
[proxy]
https_listen = ["127.0.0.1:8443"]
http_listen = ["127.0.0.1:8080"]
[api]
listen = "127.0.0.1:8000"
admin_token_file = "admin.token"
[store]
path = "var/webgateway.db"
"""


def test_design_example_loads_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    f = tmp_path / "conf" / "gw.toml"
    f.parent.mkdir()
    f.write_text(GOOD)
    cfg = load_config(f)
    assert cfg.zone.name == "gw.example.com"
    assert cfg.zone.gateway_ipv6 == (ipaddress.IPv6Address("2001:db8::10"),)
    assert [str(a) for a in cfg.dns.listen] == ["127.0.0.1:5353", "[::1]:5353"]
    assert cfg.store.path == tmp_path / "conf" / "var" / "webgateway.db"
    assert cfg.store.path.parent.is_dir()
    assert cfg.acme is not None and cfg.acme.ca_bundle == tmp_path / "conf" / "pebble.minica.pem"
    assert cfg.api.admin_token_file == tmp_path / "conf" / "admin.token"
    assert cfg.api.metrics_token_file is None  # off unless set: only the admin token scrapes
    f.write_text(GOOD.replace('admin_token_file = "admin.token"',
                              'admin_token_file = "admin.token"\n'
                              'metrics_token_file = "prom/metrics.token"'))
    assert load_config(f).api.metrics_token_file == tmp_path / "conf" / "prom" / "metrics.token"
    assert (tmp_path / "conf" / "prom").is_dir()
    assert cfg.zone.hostmaster == "hostmaster@gw.example.com"


def test_acme_is_optional(tmp_path: Path) -> None:
    assert parse_config(raw_config(tmp_path), tmp_path).acme is None


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"zone": {"name": "not a domain"}}, "zone.name", "label"),
    ({"zone": {"name": "com"}}, "zone.name", "two labels"),
    ({"zone": {"ttl": "300"}}, "zone.ttl", "integer"),
    ({"zone": {"ttl": -1}}, "zone.ttl", "between"),
    ({"dns": {"rrl_responses_per_second": -5}}, "dns.rrl_responses_per_second", "between"),
    ({"dns": {"rrl_slip": 11}}, "dns.rrl_slip", "between"),
    ({"api": {"metrics_token_file": ""}}, "api.metrics_token_file", "empty"),
    ({"api": {"metrics_token_file": 7}}, "api.metrics_token_file", "string"),
    ({"dns": {"rrl_table_size": 0}}, "dns.rrl_table_size", "between"),
    ({"zone": {"gateway_ipv4": ["2001:db8::1"]}}, "zone.gateway_ipv4", "IPv4"),
    ({"zone": {"gateway_ipv6": ["300.1.1.1"]}}, "zone.gateway_ipv6", "not an IPv4 or IPv6"),
    ({"zone": {"nameservers": {}}}, "zone.nameservers", "table"),
    ({"zone": {"colour": "blue"}}, "zone.colour", "unknown key"),
    ({"dns": {"listen": ["127.0.0.1"]}}, "dns.listen", "address:port"),
    ({"dns": {"listen": ["::1:53"]}}, "dns.listen", "[addr]:port"),
    ({"dns": {"listen": ["127.0.0.1:70000"]}}, "dns.listen", "between"),
    ({"dns": {"listen": "127.0.0.1:53"}}, "dns.listen", "list"),
    ({"dns": {"listen": []}}, "dns.listen", "at least 1"),
    ({"acme": {"email": "x@y"}}, "acme.directory", "required"),
    ({"acme": {"directory": "ftp://x"}}, "acme.directory", "URL"),
    ({"acme": {"directory": "https://a/dir", "email": "nope"}}, "acme.email", "e-mail"),
    ({"api": {"listen": "localhost:80"}}, "api.listen", "not an IPv4 or IPv6"),
    ({"store": {"poll_interval": True}}, "store.poll_interval", "number"),
    ({"log": {"level": "loud"}}, "log.level", "one of"),
    ({"api": {"domain_claim_ttl": "1w"}}, "api.domain_claim_ttl", "'7d', '12h', '30m'"),
    ({"api": {"domain_claim_ttl": "10s"}}, "api.domain_claim_ttl", "between 1m and 366d"),
    ({"api": {"domain_claim_ttl": "nan"}}, "api.domain_claim_ttl", "between"),
    ({"api": {"domain_claim_ttl": "400d"}}, "api.domain_claim_ttl", "between"),
    ({"api": {"domain_claim_ttl": -3600}}, "api.domain_claim_ttl", "between"),
    ({"api": {"domain_claim_ttl": True}}, "api.domain_claim_ttl", "expected a duration"),
    ({"bogus": {}}, "bogus", "unknown section"),
    ({"proxy": {"tunnel_max_idle_per_name": 0}}, "proxy.tunnel_max_idle_per_name", "between"),
    ({"proxy": {"tunnel_max_waiters_per_name": "9"}}, "proxy.tunnel_max_waiters_per_name",
     "integer"),
    ({"proxy": {"tunnel_failures_per_minute": 0}}, "proxy.tunnel_failures_per_minute",
     "between"),
]


def test_tunnel_limits_have_defaults_and_can_be_tuned(tmp_path: Path) -> None:
    p = parse_config(raw_config(tmp_path), tmp_path).proxy
    assert (p.tunnel_max_idle_per_name, p.tunnel_max_waiters_per_name,
            p.tunnel_failures_per_minute) == (64, 1024, 20)
    doc = raw_config(tmp_path)
    doc["proxy"].update(tunnel_max_idle_per_name=8, tunnel_max_waiters_per_name=0,
                        tunnel_failures_per_minute=5)
    p = parse_config(doc, tmp_path).proxy
    assert (p.tunnel_max_idle_per_name, p.tunnel_max_waiters_per_name,
            p.tunnel_failures_per_minute) == (8, 0, 5)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7d", 604800.0), ("12h", 43200.0), ("30m", 1800.0), ("90s", 90.0), ("3600", 3600.0),
     (86400, 86400.0), (" 2D ", 172800.0), (1.5e3, 1500.0)],
)
def test_domain_claim_ttl_takes_a_duration(tmp_path: Path, value: object, seconds: float) -> None:
    assert parse_config(raw_config(tmp_path), tmp_path).api.domain_claim_ttl == 7 * 86400
    cfg = parse_config(raw_config(tmp_path, api={"domain_claim_ttl": value}), tmp_path)
    assert cfg.api.domain_claim_ttl == seconds


@pytest.mark.parametrize(("override", "key", "words"), BAD)
def test_bad_values_name_the_key(
    tmp_path: Path, override: dict[str, Any], key: str, words: str
) -> None:
    doc = raw_config(tmp_path)
    for section, values in override.items():
        doc.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == key
    assert words in e.value.reason


def test_missing_zone_and_gateway(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="zone"):
        parse_config({}, tmp_path)
    doc = raw_config(tmp_path)
    del doc["zone"]["gateway_ipv4"], doc["zone"]["gateway_ipv6"]
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "zone.gateway_ipv4"


def test_same_listener_twice_is_refused(tmp_path: Path) -> None:
    doc = raw_config(tmp_path)
    doc["api"]["listen"] = doc["proxy"]["https_listen"][0]
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "api.listen" and "also used by proxy.https_listen" in e.value.reason


@pytest.mark.parametrize(
    ("text", "words"),
    [("[zone\nname=", "not valid TOML"), (b"\xff\xfe", "not UTF-8")],
)
def test_unreadable_files(tmp_path: Path, text: str | bytes, words: str) -> None:
    f = tmp_path / "c.toml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=words):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_cli_reports_one_line_and_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD.replace('ttl = 300', 'ttl = "soon"'))
    r = subprocess.run(
        [sys.executable, "-m", "webgateway.cli", "run", "--config", str(f)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "webgateway: config error: zone.ttl: expected an integer, got str"


# ------------------------------------------------------------------ zone transfers

KEY32 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
TSIG_BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"secondaries": ["192.0.2.53:53"]}, "dns.secondaries", "need a TSIG key"),
    ({"transfer_allow": ["192.0.2.0/24"]}, "dns.transfer_allow", "need a TSIG key"),
    ({"secondaries": ["192.0.2.53"]}, "dns.secondaries", "address:port"),
    ({"transfer_allow": ["192.0.2.1/24"]}, "dns.transfer_allow", "host bits"),
    ({"tsig": {"secret": KEY32}}, "dns.tsig.name", "required"),
    ({"tsig": {"name": "xfr"}}, "dns.tsig.secret", "exactly one of"),
    ({"tsig": {"name": "xfr", "secret": KEY32, "secret_file": "k"}}, "dns.tsig.secret",
     "exactly one of"),
    ({"tsig": {"name": "xfr", "secret": "not base64!"}}, "dns.tsig.secret", "base64"),
    ({"tsig": {"name": "xfr", "secret": "c2hvcnQ="}}, "dns.tsig.secret", "at least 16"),
    ({"tsig": {"name": "xfr", "secret": KEY32, "algorithm": "hmac-md5"}},
     "dns.tsig.algorithm", "unknown algorithm"),
    ({"tsig": {"name": "x fr", "secret": KEY32}}, "dns.tsig.name", "key name"),
    ({"tsig": {"name": "xfr", "secret": KEY32, "colour": 1}}, "dns.tsig.colour", "unknown key"),
    ({"tsig": {"name": "xfr", "secret_file": "missing.key"}}, "dns.tsig.secret_file",
     "cannot read"),
]


@pytest.mark.parametrize(("dns", "key", "words"), TSIG_BAD)
def test_bad_transfer_settings_name_the_key(
    tmp_path: Path, dns: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(raw_config(tmp_path, dns=dns), tmp_path)
    assert e.value.key == key
    assert words in e.value.reason


def test_transfer_settings_and_the_default_acl(tmp_path: Path) -> None:
    cfg = parse_config(raw_config(tmp_path, dns={
        "secondaries": ["192.0.2.53:53", "[2001:db8::53]:5353"],
        "tsig": {"name": "XFR.example.", "secret": KEY32, "algorithm": "hmac-sha512"},
    }), tmp_path)
    assert cfg.dns.tsig is not None and cfg.dns.tsig.name == "xfr.example"
    assert cfg.dns.tsig.secret == bytes(range(32)) and cfg.dns.tsig.algorithm == "hmac-sha512"
    assert KEY32 not in repr(cfg) and "secret" not in repr(cfg.dns.tsig)
    assert [str(n) for n in cfg.dns.transfer_acl()] == ["192.0.2.53/32", "2001:db8::53/128"]
    cfg = parse_config(raw_config(tmp_path, dns={
        "secondaries": ["192.0.2.53:53"], "transfer_allow": ["198.51.100.0/24"],
        "tsig": {"name": "xfr", "secret": KEY32}}), tmp_path)
    assert [str(n) for n in cfg.dns.transfer_acl()] == ["198.51.100.0/24"]


def test_the_secret_file_is_relative_private_and_base64(tmp_path: Path) -> None:
    f = tmp_path / "tsig.key"
    f.write_text(KEY32 + "\n")
    f.chmod(0o644)
    doc = raw_config(tmp_path, dns={"tsig": {"name": "xfr", "secret_file": "tsig.key"}})
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "dns.tsig.secret_file" and "chmod 600" in e.value.reason
    f.chmod(0o600)
    tsig = parse_config(doc, tmp_path).dns.tsig
    assert tsig is not None and tsig.secret == bytes(range(32))
    f.write_text("%%%")
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "dns.tsig.secret_file" and "base64" in e.value.reason


def _parse_within(doc: dict[str, Any], base: Path, seconds: float) -> BaseException | None:
    """parse_config in a thread that must end within ``seconds`` (a read of a FIFO hangs)."""
    got: list[BaseException | None] = []

    def run() -> None:
        try:
            parse_config(doc, base)
            got.append(None)
        except BaseException as e:  # handed to the test
            got.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "reading the key file hung"
    return got[0]


def test_the_key_file_must_be_a_regular_private_file_not_a_fifo_link_or_folder(
        tmp_path: Path) -> None:
    doc = raw_config(tmp_path)
    doc["store"] = {"key_file": "store.key"}
    key = tmp_path / "store.key"
    os.mkfifo(key, 0o600)  # nobody writes to it: a plain open() waits forever
    e = _parse_within(doc, tmp_path, 5.0)
    assert isinstance(e, ConfigError) and e.key == "store.key_file"
    assert "is a FIFO" in e.reason and "regular file" in e.reason
    assert "head -c 32 /dev/urandom" in e.reason
    key.unlink()
    key.mkdir(mode=0o700)
    e = _parse_within(doc, tmp_path, 5.0)
    assert isinstance(e, ConfigError) and "is a directory" in e.reason
    key.rmdir()
    # a link is resolved with the config's paths: what it names is checked, never followed
    # by the open itself (a link swapped in after resolving is refused, not read)
    fifo, real = tmp_path / "fifo", tmp_path / "real.key"
    os.mkfifo(fifo, 0o600)
    key.symlink_to(fifo)
    e = _parse_within(doc, tmp_path, 5.0)
    assert isinstance(e, ConfigError) and f"{fifo} is a FIFO" in e.reason
    key.unlink()
    real.write_bytes(bytes(range(32)))
    real.chmod(0o600)
    key.symlink_to(real)
    assert parse_config(doc, tmp_path).store.key == bytes(range(32))
    with pytest.raises(ConfigError, match="is a symbolic link"):
        _secret_file("store.key_file", key, "")  # as if swapped in after resolving
    key.unlink()
    real.rename(key)
    for mode in (0o640, 0o604, 0o660):
        key.chmod(mode)
        e = _parse_within(doc, tmp_path, 5.0)
        assert isinstance(e, ConfigError) and f"chmod 600 {key}" in e.reason
    for mode in (0o600, 0o400):
        key.chmod(mode)
        assert parse_config(doc, tmp_path).store.key == bytes(range(32))
    key.chmod(0o600)
    key.write_bytes(b"x" * 10_000_000)  # read in bounded size, refused
    e = _parse_within(doc, tmp_path, 5.0)
    assert isinstance(e, ConfigError) and "larger than 4096 bytes" in e.reason
    key.write_text("correct horse battery staple 12!")
    e = _parse_within(doc, tmp_path, 5.0)
    assert isinstance(e, ConfigError) and e.key == "store.key_file"
    assert f"head -c 32 /dev/urandom > {key}; chmod 600 {key}" in e.reason


BAD_STORE_URLS: list[tuple[str, str]] = [
    ("mysql://u@h/db", "postgresql://"),
    ("postgresql://u:secret@127.0.0.1/db", "password"),
    ("postgresql://u@127.0.0.1:5432", "names no database"),
    ("postgresql://u@127.0.0.1:5432/", "names no database"),
    ("postgresql://u@127.0.0.1:5432/a/b", "names no database"),
    ("postgresql://u@127.0.0.1:99999/db", "not a valid URL"),
    ("postgresql://u@127.0.0.1:0/db", "port 0"),
    ("postgresql:///db", "names no server"),
    ("postgresql:///db?host=relative/dir", "absolute path"),
    ("postgresql:///db?host=/run/pg&port=x", "port number"),
    ("postgresql://u@h/db?options=-c%20x", "unknown parameter 'options'"),
    ("postgresql://u@h/db?host", "not a valid URL"),
    ("postgresql://u@h/db#frag", "fragment"),
    ("", "postgresql://"),
]


@pytest.mark.parametrize(("url", "words"), BAD_STORE_URLS)
def test_bad_store_url_names_the_key(tmp_path: Path, url: str, words: str) -> None:
    doc = raw_config(tmp_path)
    doc["store"] = {"url": url}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "store.url"
    assert words in e.value.reason
    assert "secret" not in str(e.value)


def test_store_url_and_path_are_exclusive(tmp_path: Path) -> None:
    doc = raw_config(tmp_path)
    doc["store"] = {"path": "x.db", "url": "postgresql://wg@127.0.0.1:5432/wg"}
    with pytest.raises(ConfigError, match="not both") as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "store.url"


@pytest.mark.parametrize("url", [
    "postgresql://webgateway@127.0.0.1:5432/webgateway",
    "postgres://wg@[::1]/wg?sslmode=require",
    "postgresql:///webgateway?host=/run/postgresql&port=5433&user=wg",
])
def test_good_store_urls(tmp_path: Path, url: str) -> None:
    doc = raw_config(tmp_path)
    doc["store"] = {"url": url, "timeout": 3, "plaintext_keys": True}
    cfg = parse_config(doc, tmp_path)
    assert cfg.store.url == url and cfg.store.timeout == 3.0


def test_a_postgresql_store_needs_a_key_file_or_an_explicit_plaintext(tmp_path: Path) -> None:
    url = "postgresql://wg@127.0.0.1/wg"
    doc = raw_config(tmp_path)
    doc["store"] = {"url": url}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "store.key_file" and "openssl rand -base64 32" in e.value.reason
    doc["store"] = {"url": url, "plaintext_keys": True}
    assert parse_config(doc, tmp_path).store.key == b""
    key = tmp_path / "store.key"
    key.write_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    key.chmod(0o644)
    doc["store"] = {"url": url, "key_file": "store.key"}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "store.key_file" and "chmod 600" in e.value.reason
    key.chmod(0o600)
    cfg = parse_config(doc, tmp_path)
    assert cfg.store.key == bytes(range(32)) and "AAECAw" not in repr(cfg)
    assert bytes(range(32)).hex() not in repr(cfg) and "key=" not in repr(cfg.store)
    key.write_text("too short\n")
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "store.key_file" and "exactly 32 random bytes" in e.value.reason
    doc["store"] = {"url": url, "key_file": "missing.key"}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "store.key_file" and "cannot read" in e.value.reason
    # SQLite: optional (the store file is 0600 on the machine that would hold the key)
    assert parse_config(raw_config(tmp_path), tmp_path).store.key == b""


def test_order_budget_keys(tmp_path: Path) -> None:
    doc = raw_config(tmp_path, acme={"directory": "https://ca.test/dir", "max_orders": 10,
                                     "order_window": "1h"})
    acme = parse_config(doc, tmp_path).acme
    assert acme is not None and (acme.max_orders, acme.order_window) == (10, 3600.0)
    doc["acme"]["max_orders"] = 0
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == "acme.max_orders"
