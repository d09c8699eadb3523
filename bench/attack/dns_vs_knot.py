"""DNS under an unpaced flood, dnsd and Knot side by side, both with response rate limiting.

usage (from the repository root; needs knotd from apt ``knot``):
    .venv/bin/python -m bench.attack.dns_vs_knot [SECONDS=6] [FLOODERS=2] [RATE=200] [PACE=100]

Starts Knot (its ``mod-rrl``: ``rate-limit: RATE``, ``slip: 2``) and ``webgateway dnsd``
(``[dns] rrl_responses_per_second = RATE``, ``rrl_slip = 2``) on the same gw.test zone.
For each in turn: an honest resolver-like client (127.0.0.1, one query at a time paced
at PACE q/s, alice.gw.test A with its answer checked, 0.5 s timeout) for SECONDS quiet,
then for SECONDS while FLOODERS processes send the hostile corpus of
tests/soak/dns_flood.py unpaced from 127.0.1.1 (another /24: the attacker's network).
RATE=0: neither limits. Prints the honest queries answered (share of those asked), the
server's CPU (from /proc) and the flood datagrams sent. Only the processes it starts are
stopped, by PID.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from tests.procs import Proc, wait_dns
from tests.soak.dns_flood import dnsd, flood_worker, legit_once
from tests.soak.gauges import cpu_seconds
from tests.support import ZONE, free_port

FLOOD_SOURCE = "127.0.1.1"


def knot(tmp: Path, rate: int) -> tuple[Proc, int]:
    port = free_port()
    rrl = f"mod-rrl:\n  - id: default\n    rate-limit: {rate}\n    slip: 2\n" if rate else ""
    module = "    global-module: mod-rrl/default\n" if rate else ""
    (tmp / "zone").write_text(
        f"$ORIGIN {ZONE}.\n$TTL 300\n@ SOA ns1 hostmaster 1 3600 600 1209600 30\n"
        "@ NS ns1\nns1 A 127.0.0.1\n@ A 127.0.0.1\nalice A 127.0.0.1\nbob A 127.0.0.1\n")
    (tmp / "knot.conf").write_text(f"""server:
    rundir: "{tmp}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: warning
database:
    storage: "{tmp}"
{rrl}template:
  - id: default
    storage: "{tmp}"
{module}zone:
  - domain: {ZONE}
    file: "{tmp}/zone"
""")
    proc = Proc("knotd", ["knotd", "-c", str(tmp / "knot.conf")], tmp / "knot.log")
    wait_dns("127.0.0.1", port, ZONE, proc)
    return proc, port


def honest(port: int, seconds: float, pace: float) -> tuple[int, int]:
    """(answered right, asked) by one client pacing its queries at ``pace`` per second."""
    ok = asked = 0
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        ahead = asked / pace - (now - t0)
        if ahead > 0:
            time.sleep(ahead)
        asked += 1
        ok += legit_once("127.0.0.1", port, tries=1, timeout=0.5)
    return ok, asked


def measure(name: str, proc: Proc, port: int, seconds: float, flooders: int,
            pace: float) -> None:
    ok, asked = honest(port, seconds, pace)
    print(f"{name:5} quiet: {ok}/{asked} honest answered ({ok / asked:.1%})")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(flooders) as pool:
        sent_r = pool.starmap_async(
            flood_worker, [("127.0.0.1", port, 20_000, 1000 + i, seconds + 1, 0.0, FLOOD_SOURCE)
                           for i in range(flooders)])
        time.sleep(1.0)  # the corpus generated, the flood going
        cpu0 = cpu_seconds(proc.pid)
        ok, asked = honest(port, seconds, pace)
        cpu1 = cpu_seconds(proc.pid)
        sent = sum(sent_r.get(seconds + 120))
    proc.check()
    print(f"{name:5} flood: {ok}/{asked} honest answered ({ok / asked:.1%}), server CPU "
          f"{cpu1 - cpu0:.2f} s in {seconds:.0f} s, hostile datagrams sent {sent} "
          f"({sent / (seconds + 1):.0f}/s)")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 6.0
    flooders = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    pace = float(sys.argv[4]) if len(sys.argv) > 4 else 100.0
    with tempfile.TemporaryDirectory() as tmp:
        kproc, kport = knot(Path(tmp), rate)
        try:
            measure("knot", kproc, kport, seconds, flooders, pace)
        finally:
            kproc.stop()
        (Path(tmp) / "dnsd").mkdir()
        with dnsd(Path(tmp) / "dnsd", rrl_responses_per_second=rate, rrl_slip=2) as d:
            measure("dnsd", d.proc, d.port, seconds, flooders, pace)


if __name__ == "__main__":
    main()
