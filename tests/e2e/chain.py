"""The Internet in miniature, on loopback: a root and a parent zone served by Knot, a
recursive Unbound that starts from that root, and an overlay backend in a network namespace.

Glue records cannot carry a port, so every DNS server listens on port 53 of its own
loopback address (root/parent 127.0.0.3, our dnsd 127.0.0.2, Unbound 127.0.0.4).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec

from tests import knot
from tests.procs import Proc, wait_dns, wait_tcp

PARENT_ADDR = "127.0.0.3"
DNSD_ADDR = "127.0.0.2"
UNBOUND_ADDR = "127.0.0.4"
PROXY_ADDR = "127.0.0.5"
PARENT = "example.test"
ZONE = f"gw.{PARENT}"


def _root_zone() -> str:
    return textwrap.dedent(f"""\
        $TTL 60
        .  SOA a.root-servers.test. hostmaster.test. 1 3600 900 604800 1
        .  NS a.root-servers.test.
        a.root-servers.test.  A {PARENT_ADDR}
        {PARENT}.  NS ns.{PARENT}.
        ns.{PARENT}.  A {PARENT_ADDR}
        """)


def _parent_zone(ns: dict[str, str]) -> str:
    lines = [
        "$TTL 60",
        f"$ORIGIN {PARENT}.",
        f"@ SOA ns.{PARENT}. hostmaster.{PARENT}. 1 3600 900 604800 1",
        "@ NS ns",
        f"ns A {PARENT_ADDR}",
    ]
    for host, addr in ns.items():
        lines.append(f"{ZONE}. NS {host}.")
        lines.append(f"{host}. A {addr}")
    return "\n".join(lines) + "\n"


class Knot(knot.Knot):
    """Knot serving the root and the parent zone, both signed (automatic signing), the
    parent's DS in the root; records can be added like a registrar does."""

    def __init__(self, work: Path, ns: dict[str, str]) -> None:
        super().__init__(work / "knot", PARENT_ADDR, 53,
                         {PARENT: _parent_zone(ns), ".": _root_zone()}, signed=True)
        ds = [dns.dnssec.make_ds(PARENT + ".", k, "SHA256").to_text()
              for k in self.dnskeys(PARENT + ".") if k.flags & 1]
        super().set_records(".", [(PARENT + ".", "DS", d) for d in ds])

    def trust_anchor(self) -> str:
        """The root's key-signing DNSKEY, as a resolver's trust anchor line."""
        keys = [k for k in self.dnskeys(".") if k.flags & 1]
        assert keys, "the root has no SEP key"
        return f". DNSKEY {keys[0].to_text()}"

    def set_records(self, records: list[tuple[str, str, str]]) -> None:  # type: ignore[override]
        """Add (owner, type, data) records to the parent zone."""
        super().set_records(PARENT, records)

    def unset_records(self, owner: str, rtype: str) -> None:  # type: ignore[override]
        super().unset_records(PARENT, owner, rtype)

    def replace_records(self, owner: str, rtype: str,  # type: ignore[override]
                        datas: list[str]) -> None:
        super().replace_records(PARENT, owner, rtype, datas)


class Unbound:
    """A validating recursive resolver from our root (``anchor``: the root's DNSKEY line).

    ``stub``: (zone, address) sends that zone's queries to one address instead of the
    servers the parent names -- the way a test puts a relay in the path.
    """

    def __init__(self, work: Path, anchor: str, addr: str = UNBOUND_ADDR,
                 stub: tuple[str, str] | None = None) -> None:
        self.addr = addr
        self.dir = work / f"unbound-{addr}"
        self.dir.mkdir(parents=True, exist_ok=True)
        stub_conf = (f'stub-zone:\n    name: "{stub[0]}"\n    stub-addr: {stub[1]}@53\n'
                     if stub else "")
        (self.dir / "root.hints").write_text(
            f".  3600000 NS a.root-servers.test.\na.root-servers.test. 3600000 A {PARENT_ADDR}\n")
        conf = self.dir / "unbound.conf"
        conf.write_text(textwrap.dedent(f"""\
            server:
                interface: {addr}
                port: 53
                do-ip6: no
                do-not-query-localhost: no
                access-control: 127.0.0.0/8 allow
                root-hints: "{self.dir}/root.hints"
                module-config: "validator iterator"
                trust-anchor: "{anchor}"
                val-log-level: 2
                username: ""
                chroot: ""
                directory: "{self.dir}"
                pidfile: "{self.dir}/unbound.pid"
                use-syslog: no
                logfile: ""
                verbosity: 1
                cache-max-negative-ttl: 1
                cache-max-ttl: 5
                qname-minimisation: yes
                harden-referral-path: no
                num-threads: 1
                local-zone: "test." nodefault
            remote-control:
                control-enable: no
            """) + stub_conf)
        subprocess.run(["unbound-checkconf", str(conf)], check=True, capture_output=True,
                       timeout=30)
        self.proc = Proc("unbound", ["unbound", "-d", "-c", str(conf)], self.dir / "unbound.log")
        wait_dns(addr, 53, f"{PARENT}.", self.proc)

    def stop(self) -> None:
        self.proc.stop()


@dataclass
class Overlay:
    """A backend host on an IPv6 'overlay' (a veth into a network namespace we create)."""

    netns: str
    host_if: str
    gateway_addr: str
    backend_addr: str

    @classmethod
    @contextlib.contextmanager
    def create(cls, tag: str) -> Iterator[Overlay]:
        netns, host_if, peer_if = f"wgt-{tag}", f"wgt{tag}a", f"wgt{tag}b"
        ov = cls(netns, host_if, "fd00:77::1", "fd00:77::5")

        def ip(*args: str) -> None:
            subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

        ip("netns", "add", netns)
        try:
            ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
            ip("link", "set", peer_if, "netns", netns)
            ip("-6", "addr", "add", f"{ov.gateway_addr}/64", "dev", host_if, "nodad")
            ip("link", "set", host_if, "up")
            ip("-n", netns, "-6", "addr", "add", f"{ov.backend_addr}/64", "dev", peer_if, "nodad")
            ip("-n", netns, "link", "set", peer_if, "up")
            ip("-n", netns, "link", "set", "lo", "up")
            yield ov
        finally:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)

    def serve_http(self, root: Path, port: int, log: Path) -> Proc:
        """A plain HTTP server inside the namespace, on the overlay address."""
        proc = Proc("backend", ["ip", "netns", "exec", self.netns, sys.executable, "-m",
                                "http.server", "--bind", self.backend_addr, "--directory",
                                str(root), str(port)], log)
        wait_tcp(self.backend_addr, port, proc)
        return proc


def tools_missing() -> list[str]:
    return [t for t in ("knotd", "knotc", "unbound", "unbound-checkconf", "ip", "pebble", "curl")
            if shutil.which(t) is None]
