"""A hidden node for real: the backend sits in a network namespace nobody can connect into.

The namespace's firewall (nftables, installed by the test) rejects every inbound
connection; only connections the node opens pass. ``webgateway run`` is the gateway, the
owner makes the name with ``webgateway name add --tunnel``, ``webgateway tunnel`` runs
inside the namespace, and curl on the host reaches the backend through the tunnel. The
node is killed and restarted, then the gateway is killed and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.gateway import cli, write_config
from tests.procs import Proc, wait_tcp
from tests.support import ZONE, cert_row, free_port
from webgateway.sqlite_store import SqliteStore

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a network namespace and nftables"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft") and shutil.which("curl")),
                       reason="needs ip (iproute2), nft (nftables) and curl"),
]

NETNS, HOST_IF, PEER_IF = "wgt-hidden", "wgthida", "wgthidb"
GATEWAY_ADDR, NODE_ADDR = "10.231.7.1", "10.231.7.2"  # a /30 of our own between the two
BACKEND_PORT = 8080
BODY = "hello from a hidden node\n"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def hidden_namespace() -> Iterator[None]:
    """A namespace on a veth pair whose firewall refuses every connection from outside."""
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, timeout=30)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=30)
    _ip("netns", "add", NETNS)
    try:
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF)
        _ip("link", "set", PEER_IF, "netns", NETNS)
        _ip("addr", "add", f"{GATEWAY_ADDR}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("-n", NETNS, "addr", "add", f"{NODE_ADDR}/30", "dev", PEER_IF)
        _ip("-n", NETNS, "link", "set", PEER_IF, "up")
        _ip("-n", NETNS, "link", "set", "lo", "up")
        rules = (
            "table inet hidden {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f'    iifname "{PEER_IF}" ct state new reject with tcp reset\n'
            "  }\n"
            "}\n"
        )
        subprocess.run(["ip", "netns", "exec", NETNS, "nft", "-f", "-"], input=rules.encode(),
                       check=True, capture_output=True, timeout=30)
        yield
    finally:
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=30)


@dataclass
class Hidden:
    tmp: Path
    cfg: Path
    ca_file: Path
    https_port: int
    token: str
    gateway: Proc

    def curl(self) -> tuple[int, str]:
        r = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", str(self.ca_file), "-o", "-",
             "-w", "\n%{http_code}", "--resolve", f"hidden.{ZONE}:{self.https_port}:{GATEWAY_ADDR}",
             f"https://hidden.{ZONE}:{self.https_port}/hello.txt"],
            capture_output=True, text=True, timeout=30)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def node(self, tag: str) -> Proc:
        return Proc(f"node-{tag}", [
            "ip", "netns", "exec", NETNS, sys.executable, "-m", "webgateway.cli", "tunnel",
            "--gateway", f"{GATEWAY_ADDR}:{self.https_port}", "--server-name", ZONE,
            "--ca", str(self.ca_file), "--name", "hidden", "--token", self.token,
            "--to", f"127.0.0.1:{BACKEND_PORT}"], self.tmp / f"node-{tag}.log")

    def start_gateway(self, tag: str) -> Proc:
        proc = Proc(f"gateway-{tag}", [sys.executable, "-m", "webgateway.cli", "run",
                                       "--config", str(self.cfg)],
                    self.tmp / f"gateway-{tag}.log")
        wait_tcp(GATEWAY_ADDR, self.https_port, proc)
        api = tomllib.loads(self.cfg.read_text())["api"]["listen"]
        host, port = api.rsplit(":", 1)
        wait_tcp(host, int(port), proc)  # the API starts last
        return proc


def _until(probe: object, seconds: float, step: float = 0.02) -> float:
    t0 = time.monotonic()
    while not probe():  # type: ignore[operator]
        if time.monotonic() - t0 > seconds:
            raise AssertionError(f"not true after {seconds} s")
        time.sleep(step)
    return time.monotonic() - t0


async def _put_zone_cert(db: Path, certs: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert(f"*.{ZONE}", ZONE)
    store = SqliteStore(db)
    await store.open()
    try:
        await store.put_certificate(cert_row("zone", (f"*.{ZONE}", ZONE), leaf))
    finally:
        await store.close()


@pytest.fixture
def hidden(tmp_path: Path) -> Iterator[Hidden]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(hidden_namespace())
        www = tmp_path / "www"
        www.mkdir()
        (www / "hello.txt").write_text(BODY)
        backend = Proc("backend", ["ip", "netns", "exec", NETNS, sys.executable, "-m",
                                   "http.server", "--bind", "0.0.0.0", "--directory", str(www),
                                   str(BACKEND_PORT)], tmp_path / "backend.log")
        stack.callback(backend.stop)
        https_port = free_port()
        cfg = write_config(tmp_path, proxy={
            "https_listen": [f"{GATEWAY_ADDR}:{https_port}"],
            "http_listen": [f"127.0.0.1:{free_port()}"]})
        ca = trustme.CA()
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        h = Hidden(tmp_path, cfg, ca_file, https_port, "", None)  # type: ignore[arg-type]
        h.gateway = h.start_gateway("1")
        stack.callback(lambda: h.gateway.stop())
        asyncio.run(_put_zone_cert(tmp_path / "var" / "webgateway.db",
                                   tmp_path / "var" / "certs", ca))
        url = "http://" + tomllib.loads(cfg.read_text())["api"]["listen"]
        admin = (tmp_path / "admin.token").read_text().strip()
        r = cli("owner", "add", "alice", env={"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": admin})
        env = {"WEBGATEWAY_URL": url, "WEBGATEWAY_TOKEN": r.stdout.strip()}
        r = cli("name", "add", "hidden", "--tunnel", env=env)
        assert r.returncode == 0, r.stderr
        h.token = r.stdout.split("tunnel token: ")[1].split()[0]
        yield h


def test_hidden_node_served_through_its_tunnel(hidden: Hidden) -> None:
    # the gateway cannot reach the backend: the namespace refuses connections from outside
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((NODE_ADDR, BACKEND_PORT), timeout=5).close()
    assert hidden.curl()[0] == 502  # no node connected yet: the 502 page

    node = hidden.node("1")
    try:
        _until(lambda: hidden.curl() == (200, BODY), 15, 0.1)
        # the node dies: 502 within a second
        node.stop(signal.SIGKILL)
        took_down = _until(lambda: hidden.curl()[0] == 502, 1.0)
        # it starts again: served again (the figure includes the interpreter's start-up)
        t0 = time.monotonic()
        node = hidden.node("2")
        _until(lambda: hidden.curl()[0] == 200, 10)
        took_up = time.monotonic() - t0
        # the gateway crashes and comes back: the node reconnects by itself
        hidden.gateway.stop(signal.SIGKILL)
        assert node.alive()
        t1 = time.monotonic()
        hidden.gateway = hidden.start_gateway("2")
        took_back = _until(lambda: hidden.curl()[0] == 200, 30, 0.1)
        restart = time.monotonic() - t1
        print(f"\nnode killed -> 502 in {took_down:.2f} s; node started -> 200 in {took_up:.2f} s;"
              f" gateway restarted -> 200 in {restart:.2f} s ({took_back:.2f} s after it listened)")
        assert took_up < 2.0  # 1 s asked, plus the interpreter's start-up on a loaded box
        assert restart < 10.0
        node.check()
    finally:
        node.stop()
    log = (hidden.tmp / "node-2.log").read_text()
    assert "tunnel for hidden is up" in log and hidden.token not in log
