"""The operator's commands against a live gateway process: listings, ``cert ls``, ``status``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import time
from pathlib import Path

import trustme

from tests.gateway import CLI, cli, running, write_config
from tests.support import cert_row, free_port
from webgateway.config import load_config
from webgateway.model import Certificate, CertState
from webgateway.sqlite_store import SqliteStore


def _put_certs(cfg: Path, tmp: Path) -> dt.datetime:
    """The zone certificate as certd leaves it (a real PEM) and a failing custom domain's."""
    not_after = (dt.datetime.now(dt.UTC) + dt.timedelta(days=45, hours=2)).replace(microsecond=0)
    leaf = trustme.CA().issue_cert("gw.test", "*.gw.test", not_after=not_after)

    async def put() -> None:
        store = SqliteStore(load_config(cfg).store.path)
        await store.open()
        try:
            # certd saw the owner's CNAMEs (only a claim that holds its domain gets a cert)
            claim = await store.get_domain("shop.example.test")
            assert claim is not None
            assert await store.verify_claim(claim.challenge_label, "CNAMEs in place")
            await store.put_certificate(cert_row(
                "zone", ("gw.test", "*.gw.test"), leaf,
                not_before=time.time(), not_after=not_after.timestamp()))
            await store.put_certificate(Certificate(
                "shop.example.test", ("shop.example.test",), CertState.FAILED, failures=2,
                next_attempt=time.time() + 3600, last_error="urn:acme:error:dns: no TXT"))
        finally:
            await store.close()

    asyncio.run(put())
    return not_after


def test_listings_cert_ls_and_status(tmp_path: Path) -> None:
    # ns1 is our dnsd (asked on its listen port, as check does); nothing serves ns2
    cfg = write_config(tmp_path, zone={"nameservers": {"ns1.gw.test": ["127.0.0.1"],
                                                       "ns2.gw.test": ["127.0.0.9"]}})
    with running(cfg, "run") as (_proc, url):
        admin = (tmp_path / "admin.token").read_text().strip()
        as_admin = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": admin}
        token = cli("owner", "add", "alice", env=as_admin).stdout.strip()
        alice = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": token}
        assert cli("name", "add", "web", "--backend", "10.1.2.3:80", env=alice).returncode == 0
        assert cli("domain", "add", "shop.example.test", "--name", "web",
                   env=alice).returncode == 0
        not_after = _put_certs(cfg, tmp_path)

        # cert ls: aligned columns with dates and days left, never an epoch
        r = cli("cert", "ls", env=alice)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert re.match(r"NAME\s+SANS\s+ISSUER\s+NOT AFTER\s+DAYS LEFT\s+STATE$", lines[0])
        zone = next(x for x in lines if x.startswith("zone "))
        assert not_after.date().isoformat() in zone and re.search(r"\s45\s+valid$", zone), zone
        assert "gw.test, *.gw.test" in zone
        assert lines[0].index("STATE") == zone.index("valid")  # columns line up
        assert not re.search(r"\b1[789]\d{8}\b", r.stdout)  # no epoch anywhere
        r = cli("cert", "ls", "--json", env=alice)
        certs = {c["id"]: c for c in json.loads(r.stdout)}
        assert set(certs) == {"zone", "shop.example.test"}
        assert certs["zone"]["days_left"] == 45 and certs["zone"]["not_after"].endswith("Z")

        # the admin's name ls says whose each name is; an owner's does not
        r = cli("name", "ls", env=as_admin)
        assert re.match(r"NAME\s+OWNER\s+TLS", r.stdout) and re.search(
            r"web\.gw\.test\s+alice\s+terminate", r.stdout), r.stdout
        assert "OWNER" not in cli("name", "ls", env=alice).stdout
        assert json.loads(cli("name", "ls", "--json", env=alice).stdout)[0]["name"] == "web"
        domains = json.loads(cli("domain", "ls", "--json", env=alice).stdout)
        assert domains[0]["fqdn"] == "shop.example.test" and domains[0]["state"] == "verified"
        assert "shop.example.test" in cli("domain", "ls", env=alice).stdout

        # status on the box: the config gives the URL and the admin token
        r = cli("status", "--config", str(cfg))
        assert r.returncode == 1, r.stdout + r.stderr  # the NS does not answer, a cert fails
        out = r.stdout
        serial = re.search(r"api\s+\S+\s+up\s+store serial (\d+)", out)
        assert serial, out
        assert re.search(rf"dnsd\s+127\.0\.0\.1:\d+\s+up\s+serial {serial.group(1)}", out), out
        assert len(re.findall(r"proxy\s+127\.0\.0\.1:\d+\s+up", out)) == 2
        assert re.search(rf"ns1\.gw\.test \(127\.0\.0\.1:\d+\)\s+ok\s+serial {serial.group(1)}",
                         out), out
        assert re.search(r"ns2\.gw\.test \(127\.0\.0\.9:\d+\)\s+FIX\s+does not serve the zone: no"
                         r" answer within", out), out
        assert "certificate shop.example.test: urn:acme:error:dns: no TXT" in out
        assert re.search(r"NAMES\s+DOMAINS", out) and "Traceback" not in r.stderr
        st = json.loads(cli("status", "--config", str(cfg), "--json").stdout)
        assert st["healthy"] is False and st["counts"]["names"] == 1
        assert [c["ok"] for c in st["services"]] == [True, True, True, True]
        assert "certd is off" in out

    # the API is down: one screen that says so, no traceback
    down = {"WEBGATEWAY_URL": f"http://127.0.0.1:{free_port()}", "WEBGATEWAY_TOKEN": "wg_x"}
    r = cli("status", env=down)
    assert r.returncode == 1 and re.search(r"api\s+\S+\s+DOWN\s+cannot reach", r.stdout)
    assert "Traceback" not in r.stderr and "--config" in r.stdout


def test_status_lists_tunnel_names_with_their_nodes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("gw.test", "*.gw.test")

    async def put_cert() -> None:
        store = SqliteStore(load_config(cfg).store.path)
        await store.open()
        try:
            await store.put_certificate(cert_row("zone", ("gw.test", "*.gw.test"), leaf,
                                                 not_after=time.time() + 30 * 86400))
        finally:
            await store.close()

    https = load_config(cfg).proxy.https_listen[0].port
    with running(cfg, "run") as (_proc, url):
        admin = (tmp_path / "admin.token").read_text().strip()
        as_admin = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": admin}
        alice = {"WEBGATEWAY_URL": url,
                 "WEBGATEWAY_TOKEN": cli("owner", "add", "alice", env=as_admin).stdout.strip()}
        r = cli("status", "--config", str(cfg))
        assert not re.search(r"^TUNNEL\s+OWNER", r.stdout, re.M)  # no tunnel name, no section
        r = cli("name", "add", "hidden", "--tunnel", env=alice)
        token = re.search(r"tunnel token: (\S+)", r.stdout)
        assert r.returncode == 0 and token, r.stdout + r.stderr
        assert cli("name", "add", "away", "--tunnel", env=alice).returncode == 0
        asyncio.run(put_cert())
        started = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        node = subprocess.Popen(
            [*CLI, "tunnel", "--gateway", f"127.0.0.1:{https}", "--server-name", "gw.test",
             "--ca", str(tmp_path / "ca.pem"), "--name", "hidden", "--token", token.group(1),
             "--to", "127.0.0.1:9"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            tunnels: dict[str, dict[str, object]] = {}
            for _ in range(60):  # bounded: ~30 s for the node to start and dial in
                st = json.loads(cli("status", "--config", str(cfg), "--json").stdout)
                tunnels = {t["name"]: t for t in st["tunnels"]}
                if tunnels.get("hidden", {}).get("nodes") == 1:
                    break
                time.sleep(0.5)
            assert tunnels["hidden"]["nodes"] == 1 and tunnels["hidden"]["owner"] == "alice"
            since = dt.datetime.fromisoformat(str(tunnels["hidden"]["since"]))
            assert started <= since <= dt.datetime.now(dt.UTC)
            assert tunnels["away"] == {"name": "away", "owner": "alice", "nodes": 0,
                                       "since": None}
            out = cli("status", "--config", str(cfg)).stdout
            assert re.search(r"^TUNNEL\s+OWNER\s+NODES\s+CONNECTED SINCE$", out, re.M), out
            assert re.search(rf"^hidden\s+alice\s+1\s+{since:%Y-%m-%d %H:%M} UTC$", out, re.M)
            assert re.search(r"^away\s+alice\s+0\s+-$", out, re.M), out
        finally:
            node.terminate()
            node.wait(10)
