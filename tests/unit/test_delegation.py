"""The delegation judge, on observed values (the live check is exercised end to end)."""

from __future__ import annotations

from pathlib import Path

from tests.support import make_config
from webgateway.delegation import Observed, judge


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
