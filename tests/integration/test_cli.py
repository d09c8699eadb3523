"""The ``webgateway`` command as an operator and an owner use it, against a live API process."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.gateway import CLI, cli, running, write_config


def test_owner_name_domain_commands(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, log={"level": "debug"})
    with running(cfg) as (proc, url):
        admin = (tmp_path / "admin.token").read_text().strip()
        r = cli("owner", "add", "alice", env={"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": admin})
        assert r.returncode == 0, r.stderr
        token = r.stdout.strip()
        assert token.startswith("wg_") and "shown only once" in r.stderr
        env = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": token}

        r = cli("name", "add", "alice", "--backend", "[fd00::5]:8080", env=env)
        assert r.returncode == 0, r.stderr
        assert "alice.gw.test" in r.stdout and "[fd00::5]:8080" in r.stdout
        r = cli("name", "ls", env=env)
        assert r.returncode == 0 and "alice.gw.test" in r.stdout and "terminate" in r.stdout
        r = cli("domain", "add", "shop.example.test", "--name", "alice", env=env)
        assert r.returncode == 0, r.stderr
        assert "shop.example.test.  CNAME  alice.gw.test." in r.stdout
        assert re.search(r"_acme-challenge\.shop\.example\.test\.  CNAME  c[0-9a-f]{32}\."
                         r"_acme\.gw\.test\.", r.stdout), r.stdout

        # user mistakes: one line, no traceback, non-zero
        for args in (("name", "add", "Bad", "--backend", "10.0.0.1:80"),
                     ("name", "add", "ok", "--backend", "fd00::5:80"),
                     ("name", "show", "nosuch"),
                     ("name", "frobnicate")):
            r = cli(*args, env=env)
            assert r.returncode != 0, args
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = cli("name", "show", "nosuch", env=env)
        assert "you have no name 'nosuch'" in r.stderr and "404" in r.stderr
        r = cli("name", "ls", env={"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": ""})
        assert r.returncode == 2 and "WEBGATEWAY_TOKEN" in r.stderr

        r = cli("name", "rm", "alice", env=env)
        assert r.returncode == 0 and "removed" in r.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in log
        assert "name alice created" in log  # the log is there, at debug level ...
        assert token not in log and admin not in log  # ... and holds no secret
        assert token[3:20] not in log and admin[3:20] not in log


def test_domain_claims_from_the_cli(tmp_path: Path) -> None:
    """Two owners claim one domain: neither is blocked, each sees its own claim and when it
    expires, the admin sees both with their owners; rm withdraws one claim only."""
    cfg = write_config(tmp_path)
    with running(cfg) as (_proc, url):
        admin = {"WEBGATEWAY_URL": url,
                 "WEBGATEWAY_TOKEN": (tmp_path / "admin.token").read_text().strip()}
        envs = []
        for who in ("alice", "bob"):
            r = cli("owner", "add", who, env=admin)
            envs.append({"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": r.stdout.strip()})
            assert cli("name", "add", who, "--backend", "10.0.0.1:80", env=envs[-1]).returncode == 0
        env, bob = envs
        r = cli("domain", "add", "shop.example.test", "--name", "alice", env=env)
        assert r.returncode == 0, r.stderr
        assert re.search(r"^expires: +\d{4}-\d\d-\d\d \d\d:\d\d UTC", r.stdout, re.M), r.stdout
        # a second owner's claim on the same domain is not blocked; each sees its own
        r = cli("domain", "add", "shop.example.test", "--name", "bob", env=bob)
        assert r.returncode == 0 and "state:       pending" in r.stdout, r.stderr
        r = cli("domain", "ls", env=bob)
        lines = r.stdout.splitlines()
        assert re.match(r"DOMAIN\s+NAME\s+STATE\s+CERT\s+DETAIL$", lines[0]), r.stdout
        assert re.fullmatch(r"shop\.example\.test\s+bob\s+pending until \S+ \S+ UTC\s+-\s+-",
                            lines[1]), r.stdout
        r = cli("domain", "ls", env=admin)
        assert sorted(re.findall(r"^shop\.example\.test\s+(\w+)\s+(\w+)\s+pending", r.stdout,
                                 re.M)) == [("alice", "alice"), ("bob", "bob")], r.stdout
        r = cli("domain", "rm", "shop.example.test", env=bob)
        assert r.returncode == 0 and "domain claim shop.example.test removed" in r.stdout
        r = cli("domain", "show", "shop.example.test", env=bob)
        assert r.returncode == 1 and "you have no domain" in r.stderr
        r = cli("domain", "show", "shop.example.test", env=env)
        assert r.returncode == 0 and "-> alice" in r.stdout


def test_owner_add_on_the_box_and_unreachable_api(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    r = cli("owner", "add", "bob", "--config", str(cfg))
    assert r.returncode == 0 and r.stdout.startswith("wg_"), r.stderr
    r = cli("owner", "add", "bob", "--config", str(cfg))
    assert r.returncode == 1 and "exists already" in r.stderr
    r = cli("name", "ls", env={"WEBGATEWAY_URL": "http://127.0.0.1:1", "WEBGATEWAY_TOKEN": "x"})
    assert r.returncode == 1 and "cannot reach the API" in r.stderr


def test_port_in_use_stops_startup_with_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    import tomllib

    port = int(tomllib.loads(cfg.read_text())["api"]["listen"].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = cli("api", "--config", str(cfg))
    assert r.returncode == 2
    assert f"config error: api.listen: cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def _put(url: str, token: str, label: str) -> int:
    req = urllib.request.Request(
        f"{url}/v1/names/{label}", method="PUT",
        data=json.dumps({"backends": ["10.0.0.1:80"]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(r.status)


@pytest.mark.parametrize("command", ["api", "run"])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, command: str) -> None:
    cfg = write_config(tmp_path, api={"max_names_per_owner": 100000})
    acked: list[str] = []
    with running(cfg, command) as (proc, url):
        admin = (tmp_path / "admin.token").read_text().strip()
        token = cli("owner", "add", "burst", env={"WEBGATEWAY_URL": url,
                                                  "WEBGATEWAY_TOKEN": admin}).stdout.strip()
        stop = threading.Event()

        def writer(prefix: str) -> None:
            for i in range(5000):
                if stop.is_set():
                    return
                label = f"{prefix}{i}"
                try:
                    if _put(url, token, label) == 201:
                        acked.append(label)
                except (urllib.error.URLError, OSError, ConnectionError):
                    return

        threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b", "c", "d")]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-burst
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    assert len(acked) >= 200
    db = sqlite3.connect(tmp_path / "var" / "webgateway.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {r[0] for r in db.execute("SELECT label FROM names")}
    finally:
        db.close()
    missing = set(acked) - stored
    print(f"\nkill -9 of '{command}' after {len(acked)} acknowledged writes:"
          f" {len(stored)} rows stored, {len(missing)} lost")
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"


def test_run_serves_everything_and_stops_on_sigint(tmp_path: Path) -> None:
    import tomllib

    import dns.message
    import dns.query

    cfg = write_config(tmp_path)
    doc = tomllib.loads(cfg.read_text())
    dns_port = int(doc["dns"]["listen"][0].rsplit(":", 1)[1])
    http_port = int(doc["proxy"]["http_listen"][0].rsplit(":", 1)[1])
    with running(cfg, "run") as (proc, url):
        admin = (tmp_path / "admin.token").read_text().strip()
        token = cli("owner", "add", "o", env={"WEBGATEWAY_URL": url,
                                              "WEBGATEWAY_TOKEN": admin}).stdout.strip()
        env = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": token}
        assert cli("name", "add", "web", "--backend", "127.0.0.1:9", env=env).returncode == 0
        r = dns.query.udp(dns.message.make_query("web.gw.test", "A"), "127.0.0.1",
                          port=dns_port, timeout=3)
        assert [rd.to_text() for rr in r.answer for rd in rr] == ["127.0.0.1"]
        with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: web.gw.test\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 301")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def test_help_lists_the_commands() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for word in ("run", "dnsd", "certd", "proxy", "api", "owner", "name", "domain", "check",
                 "tunnel"):
        assert word in r.stdout



def test_no_arguments_version_and_bare_groups() -> None:
    r = cli()
    assert r.returncode == 2 and r.stderr.startswith("usage: webgateway")
    assert "webgateway: webgateway:" not in r.stderr and "token" in r.stderr
    r = cli("owner")
    assert r.returncode == 2 and r.stderr.startswith("usage: webgateway owner")
    assert "rotate" in cli("token").stderr
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"webgateway {version('webgateway')}"
    r = cli("nosuch")
    assert r.returncode == 2 and r.stderr.startswith("webgateway: argument command: invalid")
    r = cli("name", "add", "x", "--passthrough", "--terminate")
    assert r.returncode == 2
    assert r.stderr.startswith("webgateway: name add: argument --terminate: not allowed")


def test_owner_token_update_and_closed_pipe(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    with running(cfg) as (_proc, url):
        admin_env = {"WEBGATEWAY_URL": url,
                     "WEBGATEWAY_TOKEN": (tmp_path / "admin.token").read_text().strip()}
        alice = cli("owner", "add", "alice", env=admin_env).stdout.strip()
        cli("owner", "add", "bob", env=admin_env)
        env = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": alice}

        # an update changes only the flags given
        r = cli("name", "add", "vault", "--passthrough", env=env)
        assert r.returncode == 1 and "'backends' is required to create" in r.stderr
        assert cli("name", "add", "vault", "--backend", "10.0.0.7:443", "--passthrough",
                   "--proxy-protocol", env=env).returncode == 0
        r = cli("name", "add", "vault", "--backend", "10.0.0.8:443", env=env)
        assert r.returncode == 0 and "passthrough (PROXY protocol v2)" in r.stdout, r.stdout
        assert "10.0.0.8:443" in r.stdout
        r = cli("name", "add", "vault", "--terminate", "--no-proxy-protocol", env=env)
        assert "tls:         terminate\n" in r.stdout and "10.0.0.8:443" in r.stdout
        assert cli("name", "add", "web", "--backend", "10.0.0.9:80", env=env).returncode == 0
        assert cli("domain", "add", "shop.example.test", "--name", "web",
                   env=env).returncode == 0

        # a reader that is gone: no traceback, the status a SIGPIPE'd tool gives
        rd, wr = os.pipe()
        os.close(rd)
        try:
            p = subprocess.run([*CLI, "name", "show", "vault"], stdout=wr, stderr=subprocess.PIPE,
                               text=True, timeout=60, env={**os.environ, **env})
        finally:
            os.close(wr)
        assert p.returncode == 141 and p.stderr == ""
        sh = subprocess.run(["bash", "-c", f"{shlex.join(CLI)} name show vault | head -1"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})
        assert sh.stdout == "name:        vault\n" and sh.stderr == ""

        # owners: listed with what they hold; only the admin may
        r = cli("owner", "ls", env=admin_env)
        assert r.returncode == 0
        lines = r.stdout.splitlines()
        assert re.match(r"OWNER\s+SINCE\s+NAMES\s+DOMAINS$", lines[0])
        assert re.match(r"alice\s+\d{4}-\d\d-\d\d\s+2\s+1$", lines[1]), lines
        assert re.match(r"bob\s+\d{4}-\d\d-\d\d\s+0\s+0$", lines[2]), lines
        owners = json.loads(cli("owner", "ls", "--json", env=admin_env).stdout)
        assert [o["name"] for o in owners] == ["alice", "bob"]
        r = cli("owner", "ls", env=env)
        assert r.returncode == 1 and "only the admin" in r.stderr

        # rotation: the old token stops at once, the new one is printed once
        r = cli("token", "rotate", env=env)
        assert r.returncode == 0 and "old one no longer works" in r.stderr
        new = r.stdout.strip()
        assert new.startswith("wg_") and new != alice
        assert cli("name", "ls", env=env).returncode == 1
        env["WEBGATEWAY_TOKEN"] = new
        assert "vault.gw.test" in cli("name", "ls", env=env).stdout
        r = cli("token", "rotate", "--owner", "alice", env=admin_env)
        assert r.returncode == 0 and "'alice'" in r.stderr
        assert cli("name", "ls", env=env).returncode == 1
        env["WEBGATEWAY_TOKEN"] = r.stdout.strip()

        r = cli("owner", "rm", "alice", env=admin_env)
        assert r.returncode == 0
        assert r.stdout.strip() == ("owner alice removed with 2 name(s): vault, web"
                                    " and 1 domain(s): shop.example.test")
        assert cli("name", "ls", env=env).returncode == 1
        r = cli("owner", "rm", "alice", env=admin_env)
        assert r.returncode == 1 and "no owner 'alice'" in r.stderr


def test_tunnel_name_commands(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    with running(cfg) as (proc, url):
        admin = (tmp_path / "admin.token").read_text().strip()
        r = cli("owner", "add", "alice", env={"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": admin})
        env = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": r.stdout.strip()}
        r = cli("name", "add", "hidden", "--tunnel", env=env)
        assert r.returncode == 0, r.stderr
        tunnel_token = r.stdout.split("tunnel token: ")[1].split()[0]
        assert tunnel_token.startswith("wg_") and "webgateway tunnel --gateway gw.test" in r.stderr
        assert "tunnel:      yes" in r.stdout
        r = cli("name", "rotate-tunnel-token", "hidden", env=env)
        assert r.returncode == 0 and "tunnel token: wg_" in r.stdout, r.stderr
        assert tunnel_token not in r.stdout
        r = cli("name", "add", "nobackend", env=env)
        assert r.returncode == 1 and "tunnel" in r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log = proc.stderr.read() if proc.stderr else ""
        assert tunnel_token not in log and "Traceback" not in log


def test_tunnel_command_mistakes_are_one_line() -> None:
    base = ("tunnel", "--gateway", "gw.example.com", "--name", "alice", "--to", "127.0.0.1:80")
    for args, key in (((*base,), "token"),
                      ((*base, "--token", "wg_x", "--pool", "0"), "pool"),
                      (("tunnel", "--gateway", "192.0.2.1", "--name", "alice", "--token", "t",
                        "--to", "127.0.0.1:80"), "server_name")):
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        assert f"config error: {key}:" in r.stderr and len(r.stderr.strip().splitlines()) == 1
