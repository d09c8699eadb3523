"""The backend policy: every spelling of an address judged on what it reaches."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from tests.support import raw_config
from webgateway.addresses import parse_hostport, parse_ip
from webgateway.backend_policy import BackendPolicy, policy_of, reached
from webgateway.config import ConfigError, parse_config

GATEWAY = "203.0.113.10"


def policy(**kw: object) -> BackendPolicy:
    base: dict[str, object] = {
        "gateway_addresses": [parse_ip(GATEWAY), parse_ip("2001:db8::10")],
        "listeners": [("proxy.https_listen", parse_hostport("0.0.0.0:443")),
                      ("proxy.http_listen", parse_hostport("[::]:80")),
                      ("api.listen", parse_hostport("127.0.0.1:8000")),
                      ("dns.listen", parse_hostport("192.0.2.53:53"))],
    }
    base.update(kw)
    return BackendPolicy(**base)  # type: ignore[arg-type]


def rule(p: BackendPolicy, backend: str) -> str | None:
    refusal = p.judge(parse_hostport(backend))
    return None if refusal is None else refusal.rule


# Every spelling that reaches IPv4, with the rule it must meet.
SPELLINGS = [
    ("127.0.0.1:8080", "loopback"),
    ("127.8.9.10:8080", "loopback"),
    ("[::1]:8080", "loopback"),
    ("[::ffff:127.0.0.1]:29999", "loopback"),  # IPv4-mapped
    ("[::ffff:7f00:1]:8080", "loopback"),  # the same, in hex
    ("[::127.0.0.1]:8080", "loopback"),  # IPv4-compatible
    ("[::ffff:0:127.0.0.1]:8080", "loopback"),  # SIIT IPv4-translated
    ("[64:ff9b::127.0.0.1]:8080", "loopback"),  # NAT64 well-known prefix
    ("[64:ff9b::a9fe:a9fe]:8080", "link_local"),  # NAT64 to the metadata service
    ("[64:ff9b:1:7f00:0:100::]:8080", "loopback"),  # NAT64 local-use, /48 embedding
    ("[64:ff9b:1::7f00:1]:8080", "loopback"),  # NAT64 local-use, /96 embedding
    ("[2002:7f00:1::5]:8080", "loopback"),  # 6to4
    ("[2002:a9fe:a9fe::1]:8080", "link_local"),
    # Teredo: server 65.54.227.120, client 127.0.0.1 (obfuscated: 80ff:fffe)
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]:8080", "loopback"),
    # Teredo whose *server* is the metadata service, client a public address
    ("[2001:0:a9fe:a9fe:8000:63bf:3fff:fdd2]:8080", "link_local"),
    ("169.254.169.254:8080", "link_local"),
    ("[::ffff:169.254.169.254]:8080", "link_local"),
    ("[fe80::1]:8080", "link_local"),
    ("224.0.0.1:8080", "multicast"),
    ("[ff02::1]:8080", "multicast"),
    ("[::ffff:239.1.1.1]:8080", "multicast"),
    ("255.255.255.255:8080", "broadcast"),
    ("[::ffff:255.255.255.255]:8080", "broadcast"),
    ("0.0.0.0:8080", "unspecified"),
    ("0.1.2.3:8080", "unspecified"),
    ("[::]:8080", "unspecified"),
    ("[::ffff:0.0.0.0]:8080", "unspecified"),
    # the gateway's own addresses, at any port, and its listeners
    (f"{GATEWAY}:22", "own_address"),
    (f"[::ffff:{GATEWAY}]:22", "own_address"),
    ("[2001:db8::10]:9000", "own_address"),
    (f"{GATEWAY}:443", "loop"),  # the wildcard https listener
    ("[2001:db8::10]:80", "loop"),  # the wildcard http listener
    ("127.0.0.1:443", "loop"),
    ("127.0.0.1:8000", "loop"),  # the API itself
    ("[::ffff:127.0.0.1]:8000", "loop"),
    ("192.0.2.53:53", "loop"),  # dnsd over TCP
    ("[64:ff9b::192.0.2.53]:53", "loop"),
    # reachable unicast addresses pass
    ("10.1.2.3:8080", None),
    ("[fd00::5]:8080", None),
    ("[fd00::5]:443", None),  # a wildcard listener's port on someone else's address
    ("192.0.2.53:8080", "own_address"),  # a listener's address, another port
    ("[::ffff:10.1.2.3]:8080", None),
    ("[64:ff9b::8.8.8.8]:443", None),
    ("[64:ff9b:1:a00:0:100::]:443", None),  # local-use /48 to 10.0.0.1
    ("[2002:c000:204::1]:8080", None),  # 6to4 of 192.0.2.4
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]:8080", None),  # Teredo, public client
]


@pytest.mark.parametrize(("backend", "want"), SPELLINGS)
def test_every_spelling_is_judged_on_what_it_reaches(backend: str, want: str | None) -> None:
    assert rule(policy(), backend) == want


def test_what_an_address_reaches() -> None:
    got = reached(parse_ip("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert [(str(ip), how) for ip, how in got] == [
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ""),
        ("65.54.227.120", "Teredo server"),
        ("192.0.2.45", "Teredo client"),
    ]
    assert [str(ip) for ip, _ in reached(parse_ip("::ffff:10.0.0.1"))] == ["10.0.0.1"]
    assert [str(ip) for ip, _ in reached(parse_ip("fd00::5"))] == ["fd00::5"]


def test_allow_loopback_keeps_other_ports_but_never_a_listener() -> None:
    p = policy(allow_loopback=True)
    assert rule(p, "127.0.0.1:29999") is None
    assert rule(p, "[::ffff:127.0.0.1]:29999") is None
    assert rule(p, f"{GATEWAY}:22") is None
    for loop in ("127.0.0.1:8000", "[::ffff:127.0.0.1]:8000", "127.0.0.1:443", "[::1]:80",
                 f"{GATEWAY}:443", "192.0.2.53:53"):
        assert rule(p, loop) == "loop", loop
    assert rule(p, "169.254.169.254:80") == "link_local"


def test_listeners_bound_later_join_the_policy() -> None:
    p = policy(allow_loopback=True)
    assert rule(p, "127.0.0.1:41000") is None
    p2 = p.with_listeners([("proxy.https_listen", parse_hostport("127.0.0.1:41000"))])
    assert rule(p2, "127.0.0.1:41000") == "loop"
    assert rule(p, "127.0.0.1:41000") is None  # the first is unchanged
    assert rule(p2, f"{GATEWAY}:443") == "loop"


def test_backend_networks_narrow_what_passes() -> None:
    nets = [ip_network("200::/7"), ip_network("fd00::/8"), ip_network("10.0.0.0/8")]
    p = policy(networks=nets)
    assert rule(p, "[fd00::5]:80") is None
    assert rule(p, "[201::1]:80") is None
    assert rule(p, "10.9.9.9:80") is None
    assert rule(p, "[::ffff:10.9.9.9]:80") is None  # a spelling of 10.9.9.9
    assert rule(p, "192.168.1.1:80") == "outside_backend_networks"
    assert rule(p, "[2001:db8::1]:80") == "outside_backend_networks"
    # a translator's address must be inside, and so must the IPv4 it leads to
    assert rule(p, "[64:ff9b::10.1.1.1]:80") == "outside_backend_networks"
    assert rule(p, "127.0.0.1:8080") == "loopback"  # the fixed rules come first
    detail = p.judge(parse_hostport("192.168.1.1:80"))
    assert detail is not None and "backend_networks" in detail.detail
    assert "fd00::/8" in detail.detail


def test_refusals_say_which_rule_and_what_to_do() -> None:
    p = policy()
    r = p.judge(parse_hostport("[::ffff:127.0.0.1]:29999"))
    assert r is not None
    assert "reaches 127.0.0.1 (IPv4-mapped)" in r.detail and "loopback" in r.detail
    assert "Give" in r.detail
    r = p.judge(parse_hostport("127.0.0.1:8000"))
    assert r is not None and "api.listen 127.0.0.1:8000" in r.detail and "loop" in r.detail
    r = p.judge(parse_hostport("169.254.169.254:80"))
    assert r is not None and "metadata" in r.detail


def test_policy_of_a_config_knows_every_listener(tmp_path: Path) -> None:
    doc = raw_config(tmp_path, api={"allow_loopback_backends": True,
                                    "backend_networks": ["127.0.0.0/8", "fd00::/8"]})
    cfg = parse_config(doc, tmp_path)
    p = policy_of(cfg)
    for key, addrs in (("dns.listen", cfg.dns.listen),
                       ("proxy.https_listen", cfg.proxy.https_listen),
                       ("proxy.http_listen", cfg.proxy.http_listen),
                       ("api.listen", (cfg.api.listen,))):
        for a in addrs:
            r = p.judge(a)
            assert r is not None and r.rule == "loop" and key in r.detail
    assert rule(p, "127.0.0.1:1") is None
    assert rule(p, "10.0.0.1:80") == "outside_backend_networks"


@pytest.mark.parametrize(("section", "key", "value", "words"), [
    ("api", "backend_networks", ["10.0.0.1/8"], "host bits set"),
    ("api", "backend_networks", ["fd00::/129"], "not appear to be"),
    ("api", "backend_networks", "fd00::/8", "expected a list"),
    ("api", "backend_networks", [8], "expected a string"),
    ("proxy", "max_connections_per_name", 0, "between 1 and"),
    ("proxy", "max_connections_per_name", "many", "expected an integer"),
])
def test_bad_new_keys_stop_start_up(tmp_path: Path, section: str, key: str, value: object,
                                    words: str) -> None:
    doc = raw_config(tmp_path, **{section: {key: value}})
    with pytest.raises(ConfigError) as e:
        parse_config(doc, tmp_path)
    assert e.value.key == f"{section}.{key}" and words in e.value.reason


def test_new_keys_default(tmp_path: Path) -> None:
    cfg = parse_config(raw_config(tmp_path), tmp_path)
    assert cfg.api.backend_networks == () and cfg.proxy.max_connections_per_name == 1000
