"""The delegation judge, on observed values (the live check is exercised end to end)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.exception
import dns.message
import dns.resolver
import pytest

from tests.support import make_config
from webgateway.delegation import Observed, explain, judge, judge_dnssec, ns_port


def good(tmp: Path) -> tuple[Observed, object]:
    cfg = make_config(tmp)
    obs = Observed(
        parent="test",
        parent_servers={"a.root-servers.test": ["127.0.0.3"]},
        referral_ns={"a (127.0.0.3)": {"ns1.gw.test"}},
        referral_glue={"a (127.0.0.3)": {"ns1.gw.test": {"127.0.0.1"}}},
        soa_serials={"ns1.gw.test (127.0.0.1)": 7},
        resolver_soa=7,
    )
    return obs, cfg


def test_all_good(tmp_path: Path) -> None:
    obs, cfg = good(tmp_path)
    findings = judge(cfg, obs)  # type: ignore[arg-type]
    assert findings and all(ok for ok, _ in findings)


def test_each_fault_names_the_fix(tmp_path: Path) -> None:
    obs, cfg = good(tmp_path)
    obs.referral_ns["a (127.0.0.3)"] = {"ns1.other.test"}
    obs.referral_glue["a (127.0.0.3)"] = {"ns1.gw.test": {"127.0.0.9"}}
    obs.soa_serials["ns2.gw.test (127.0.0.2)"] = 6
    obs.resolver_soa = "SERVFAIL"
    bad = [text for ok, text in judge(cfg, obs) if not ok]  # type: ignore[arg-type]
    assert any("add NS ns1.gw.test" in t and "remove NS ns1.other.test" in t for t in bad)
    assert any("glue for ns1.gw.test" in t and "set it to 127.0.0.1" in t for t in bad)
    assert any("SOA serials differ" in t for t in bad)
    assert any("cannot reach" in t for t in bad)


def test_no_parent(tmp_path: Path) -> None:
    _, cfg = good(tmp_path)
    bad = [text for ok, text in judge(cfg, Observed(errors=["timeout"])) if not ok]  # type: ignore[arg-type]
    assert "timeout" in bad and any("parent zone" in t for t in bad)


def _no_nameservers(*answers: object) -> Exception:
    q = dns.message.make_query("test.", "SOA")
    errors = [("127.0.0.1", False, 53, a, None) for a in answers]
    return dns.resolver.NoNameservers(request=q, errors=errors)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (dns.resolver.NoRootSOA(), "no zone was found up to the root"),
        (dns.exception.Timeout(timeout=3.0), "no answer within 3 s"),
        (_no_nameservers("REFUSED", "SERVFAIL"), "refused or failed (REFUSED; SERVFAIL)"),
        (_no_nameservers(ConnectionRefusedError(111, "Connection refused")), "nothing listens"),
        (dns.resolver.NXDOMAIN(), "does not exist"),
        (ConnectionRefusedError(111, "Connection refused"), "nothing listens"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
        (dns.message.ShortHeader(), "malformed"),
        (RuntimeError("This should never happen!"), "failed (RuntimeError)"),
    ],
)
def test_failures_are_told_in_our_words(exc: BaseException, words: str) -> None:
    text = explain(exc)
    assert words in text
    assert "never happen" not in text and "Do53" not in text and "answered" not in text


def test_our_name_servers_are_asked_on_the_listen_port(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dns={"listen": ["127.0.0.9:5300", "127.0.0.1:5353"]})
    one, nine, other = (ipaddress.ip_address(a) for a in ("127.0.0.1", "127.0.0.9", "10.0.0.1"))
    assert ns_port(cfg, one, None) == 5353  # the listener on that address
    assert ns_port(cfg, nine, None) == 5300
    assert ns_port(cfg, other, None) == 5300  # a public address behind NAT: the first port
    assert ns_port(cfg, one, 53) == 53  # --port wins


DS = "27045 13 2 CC0E4827D820B375B6E7E1DDA0A874793FA1FC5842B74923A33AA37FBA6EAC6F"
NOW = 1_800_000_000.0


def signed(tmp: Path) -> tuple[Observed, object]:
    cfg = make_config(tmp, dnssec={"enabled": True})
    obs = Observed(parent_ds={"a (127.0.0.3)": {DS.lower()}}, our_ds={DS},
                   signatures={"ns1.gw.test (127.0.0.1)": NOW + 13 * 86400})
    return obs, cfg


def test_dnssec_chain_good(tmp_path: Path) -> None:
    obs, cfg = signed(tmp_path)
    findings = judge_dnssec(cfg, obs, NOW)  # type: ignore[arg-type]
    assert [ok for ok, _ in findings] == [True, True]
    assert "matches our key" in findings[0][1] and "13.0 more days" in findings[1][1]


def test_dnssec_faults_name_the_fix(tmp_path: Path) -> None:
    obs, cfg = signed(tmp_path)
    obs.parent_ds["a (127.0.0.3)"] = {"1 13 2 00AA"}
    obs.parent_ds["b (127.0.0.4)"] = set()
    obs.signatures["ns1.gw.test (127.0.0.1)"] = NOW + 3600
    obs.signatures["ns2.gw.test (127.0.0.2)"] = "no RRSIG over the SOA"
    fixes = [text for ok, text in judge_dnssec(cfg, obs, NOW) if not ok]  # type: ignore[arg-type]
    assert len(fixes) == 4
    assert "matches none of our keys" in fixes[0] and "webgateway zone ds" in fixes[0]
    assert "has no DS" in fixes[1]
    assert "expire in 1 h" in fixes[2]
    assert "do not validate: no RRSIG over the SOA" in fixes[3]


def test_a_ds_without_dnssec_is_a_fault(tmp_path: Path) -> None:
    obs, _ = signed(tmp_path)
    cfg = make_config(tmp_path)
    assert judge_dnssec(cfg, Observed(), NOW) == []  # type: ignore[arg-type]
    (fix,) = judge_dnssec(cfg, obs, NOW)  # type: ignore[arg-type]
    assert not fix[0] and "remove the DS" in fix[1]


def test_a_listed_secondary_is_asked_on_its_own_port(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dns={"listen": ["127.0.0.1:5353"],
                                     "secondaries": ["127.0.0.31:5301"],
                                     "tsig": {"name": "k", "secret": "A" * 44}})
    sec = ipaddress.ip_address("127.0.0.31")
    assert ns_port(cfg, sec, None) == 5301  # where its NOTIFYs go, not dnsd's port
    assert ns_port(cfg, sec, 53) == 5301  # --port is for our own servers
