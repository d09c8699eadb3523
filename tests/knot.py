"""Knot as a real authoritative DNS server in tests: a DNS host whose records change the way
a user changes them at their provider (``knotc zone-set`` in a transaction)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.procs import Proc, wait_dns


def knot_missing() -> bool:
    return not (shutil.which("knotd") and shutil.which("knotc"))


class Knot:
    """knotd serving ``zones`` (name -> zone file text) on ``host@port``, stopped by PID."""

    def __init__(self, work: Path, host: str, port: int, zones: dict[str, str],
                 signed: bool = False) -> None:
        """``signed``: Knot's automatic signing (one ECDSAP256SHA256 CSK per zone, NSEC)."""
        self.dir = work
        self.dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for name, text in zones.items():
            path = self.dir / f"{name.rstrip('.') or 'root'}.zone"
            path.write_text(text)
            entries.append(f'  - domain: {name}\n    file: "{path}"')
        self.conf = self.dir / "knot.conf"
        self.host, self.port = host, port
        self.conf.write_text(textwrap.dedent(f"""\
            server:
                rundir: "{self.dir}"
                pidfile: "{self.dir}/knot.pid"
                listen: {host}@{port}
            log:
              - target: stderr
                any: info
            database:
                storage: "{self.dir}"
            control:
                listen: "{self.dir}/knot.sock"
            """) + (_POLICY if signed else "") + textwrap.dedent(f"""\
            template:
              - id: default
                storage: "{self.dir}"
                zonefile-sync: -1
                zonefile-load: whole
                journal-content: changes
                semantic-checks: off
            """) + (_SIGNING if signed else "") + "zone:\n" + "\n".join(entries) + "\n")
        subprocess.run(["knotc", "-c", str(self.conf), "conf-check"], check=True,
                       capture_output=True, timeout=30)
        self.proc = Proc("knotd", ["knotd", "-c", str(self.conf)], self.dir / "knotd.log")
        wait_dns(host, port, next(iter(zones)), self.proc)

    def dnskeys(self, zone: str) -> dns.rrset.RRset:
        """The zone's DNSKEY RRset as Knot serves it (signed zones)."""
        q = dns.message.make_query(zone, "DNSKEY", want_dnssec=True)
        r = dns.query.tcp(q, self.host, port=self.port, timeout=5)
        return r.find_rrset(r.answer, dns.name.from_text(zone), dns.rdataclass.IN,
                            dns.rdatatype.DNSKEY)

    def set_records(self, zone: str, records: list[tuple[str, str, str]]) -> None:
        """Add (owner, type, data) records to ``zone`` in one transaction, TTL 60."""
        self._transaction(zone, [["zone-set", zone, o, "60", t, d] for o, t, d in records])

    def unset_records(self, zone: str, owner: str, rtype: str) -> None:
        """Remove the ``rtype`` RRset at ``owner`` from ``zone``."""
        self._transaction(zone, [["zone-unset", zone, owner, rtype]])

    def replace_records(self, zone: str, owner: str, rtype: str, datas: list[str]) -> None:
        """Replace the ``rtype`` RRset at ``owner`` in one transaction (as a registrar
        swaps a DS: never a moment without one), TTL 60."""
        self._transaction(zone, [["zone-unset", zone, owner, rtype],
                                 *[["zone-set", zone, owner, "60", rtype, d] for d in datas]])

    def _transaction(self, zone: str, commands: list[list[str]]) -> None:
        c = ["knotc", "-c", str(self.conf), "-t", "10"]
        subprocess.run([*c, "zone-begin", zone], check=True, capture_output=True, timeout=30)
        try:
            for cmd in commands:
                subprocess.run([*c, *cmd], check=True, capture_output=True, timeout=30)
        except subprocess.CalledProcessError:
            subprocess.run([*c, "zone-abort", zone], capture_output=True, timeout=30)
            raise
        subprocess.run([*c, "zone-commit", zone], check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        self.proc.stop()


# Automatic signing: one ECDSAP256SHA256 key per zone (a CSK), NSEC; the DS is put in the
# parent by the test itself, so Knot is told not to wait for a submission check.
_POLICY = textwrap.dedent("""\
    policy:
      - id: test
        algorithm: ecdsap256sha256
        single-type-signing: on
        nsec3: off
        dnskey-ttl: 60
        zone-max-ttl: 60
        propagation-delay: 0
    """)
_SIGNING = "    dnssec-signing: on\n    dnssec-policy: test\n"


def owner_zone(zone: str, negative_ttl: int = 1) -> str:
    """A minimal zone file for a domain owner's DNS host (short negative TTL: tests retry)."""
    return textwrap.dedent(f"""\
        $ORIGIN {zone}.
        $TTL 60
        @ SOA ns.{zone}. hostmaster.{zone}. 1 3600 900 604800 {negative_ttl}
        @ NS ns
        ns A 127.0.0.1
        """)
