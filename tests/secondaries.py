"""Real secondaries of dnsd in tests: their loopback addresses, the TSIG key they share with
dnsd, Knot's configuration as a secondary, and waiting for a secondary's first transfer.

dnsd listens on ``PRIMARY``, Knot on ``KNOT`` (each on a free high port); a test that binds
these addresses takes ``flock /tmp/wg-suite.lock`` when run beside other suites.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from tests.procs import Proc, wait_dns
from tests.support import ZONE

SECRET = base64.b64encode(bytes(range(32))).decode()
PRIMARY, KNOT = "127.0.0.30", "127.0.0.31"
TSIG = {"name": "xfr", "algorithm": "hmac-sha256", "secret": SECRET}  # dnsd's [dns.tsig]


def knot_conf(d: Path, port: int, primary_port: int) -> Path:
    conf = d / "knot.conf"
    conf.write_text(f"""server:
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
    listen: {KNOT}@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{d}"
key:
  - id: xfr
    algorithm: hmac-sha256
    secret: {SECRET}
remote:
  - id: primary
    address: {PRIMARY}@{primary_port}
    via: {KNOT}
    key: xfr
acl:
  - id: notify
    address: {PRIMARY}
    key: xfr
    action: notify
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    journal-content: changes
zone:
  - domain: {ZONE}
    master: primary
    acl: notify
""")
    return conf


def wait_for_zone(host: str, port: int, proc: Proc, seconds: float = 20) -> None:
    """Until the secondary answers the zone's SOA with authority (its first AXFR is in)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r = wait_dns(host, port, ZONE, proc, seconds=seconds)
        if r.rcode() == 0 and r.answer:
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} did not load {ZONE}:\n{proc.tail()}")
