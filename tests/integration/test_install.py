"""Installing on a server: ``webgateway init`` writes a config that starts; the systemd unit
passes ``systemd-analyze verify`` and keeps the hardening the README promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway import cli
from webgateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "webgateway.service"


def test_init_writes_a_valid_config_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "etc" / "webgateway.toml"
    out.parent.mkdir()
    state = tmp_path / "state"
    r = cli("init", "--zone", "GW.Example.COM.", "--ipv4", "203.0.113.10", "--ipv6",
            "2001:db8::10", "--email", "ops@example.com", "--state-dir", str(state),
            "--output", str(out))
    assert r.returncode == 0, r.stderr
    cfg = load_config(out)
    assert cfg.zone.name == "gw.example.com"
    assert [str(a) for a in cfg.zone.nameservers["ns1.gw.example.com"]] == [
        "203.0.113.10", "2001:db8::10"]
    assert cfg.acme is not None and cfg.acme.email == "ops@example.com"
    assert "letsencrypt" in cfg.acme.directory
    assert {str(a) for a in cfg.dns.listen} == {"0.0.0.0:53", "[::]:53"}
    assert {a.port for a in cfg.proxy.https_listen} == {443}
    assert cfg.store.path == state / "webgateway.db" and str(cfg.api.listen) == "127.0.0.1:8000"
    before = out.read_bytes()

    r = cli("init", "--zone", "other.example", "--ipv4", "192.0.2.1", "--output", str(out))
    assert r.returncode == 2 and "exists already" in r.stderr
    assert out.read_bytes() == before

    # IPv4 only, no ACME: no IPv6 listeners, no [acme]
    out2 = tmp_path / "v4.toml"
    r = cli("init", "--zone", "gw.example.net", "--ipv4", "192.0.2.1", "--no-acme",
            "--state-dir", str(state), "--output", str(out2))
    assert r.returncode == 0, r.stderr
    cfg = load_config(out2)
    assert cfg.acme is None and [str(a) for a in cfg.dns.listen] == ["0.0.0.0:53"]


@pytest.mark.parametrize(("args", "says"), [
    (("--zone", "bad zone", "--ipv4", "192.0.2.1"), "--zone:"),
    (("--zone", "gw.example.com", "--ipv4", "2001:db8::1"), "--ipv4: 2001:db8::1 is not an IPv4"),
    (("--zone", "gw.example.com", "--ipv4", "300.1.1.1"), "--ipv4: '300.1.1.1' is not an IP"),
    (("--zone", "gw.example.com", "--ipv6", "192.0.2.1"), "--ipv6:"),
    (("--zone", "gw.example.com"), "--ipv4: give the gateway's public address"),
    (("--zone", "gw.example.com", "--ipv4", "192.0.2.1", "--email", "x"), "--email:"),
    (("--zone", "gw.example.com", "--ipv4", "192.0.2.1", "--acme-directory", "ftp://x"),
     "--acme-directory:"),
    (("--zone", 'gw.example.com"\n[evil]', "--ipv4", "192.0.2.1"), "--zone:"),
    (("--zone", "gw.example.com", "--ipv4", "192.0.2.1", "--ns", "ns1.gw.example.com\"x"),
     "--ns:"),
])
def test_init_refuses_bad_answers_naming_the_flag(tmp_path: Path, args: tuple[str, ...],
                                                  says: str) -> None:
    out = tmp_path / "c.toml"
    r = cli("init", *args, "--output", str(out))
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_systemd_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in ("User=webgateway", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "StateDirectory=webgateway",
                 "WorkingDirectory=/var/lib/webgateway"):
        assert f"\n{line}\n" in text, line
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify a copy whose ExecStart points at this checkout's command (it must exist)
    exe = Path(sys.executable).with_name("webgateway")
    unit = tmp_path / "webgateway.service"
    unit.write_text(text.replace("/opt/webgateway/.venv/bin/webgateway", str(exe)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "webgateway.service" not in r.stderr, r.stderr
