"""DNS under attack, longer than the test suite's run: prints the figures for docs/reliability.md.

usage (from the repository root):
    .venv/bin/python -m bench.attack.dns_attack [SECONDS=10] [FLOODERS=1] [RATES=0,20000]

Starts ``webgateway dnsd`` as a subprocess on a throw-away store, then measures an honest
dnspython client (one query at a time, alice.gw.test A, answer checked) for SECONDS
without a flood, then for SECONDS while FLOODERS processes send hostile datagrams
(random bytes, pointer chains, oversized, lying counts, runts, mutated queries) as fast
as they can (rate 0) or paced at each of RATES datagrams/s in total, plus a round of
hostile TCP frames. Reports q/s, failures, dnsd's CPU and RSS, and the largest UDP
response/query size ratio over a query mix (with and without EDNS), including a 50-value
TXT set and ANY.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
import tempfile
import time
from pathlib import Path

import dns.flags
import dns.message

from tests.soak.dns_flood import MIX, corpus, dnsd, flood_tcp, flood_worker, legit_rate
from tests.soak.gauges import cpu_seconds, rss_kib


def amplification(host: str, port: int) -> list[tuple[str, float, int, int, str]]:
    rows = []
    for edns in (None, 1232, 4096):
        worst = (0.0, 0, 0, "")
        for name, rdtype in MIX:
            q = dns.message.make_query(name, rdtype, use_edns=False if edns is None else 0,
                                       payload=edns or 512)
            wire = q.to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.sendto(wire, (host, port))
                resp = s.recv(65535)
            tc = " TC" if dns.message.from_wire(resp).flags & dns.flags.TC else ""
            ratio = len(resp) / len(wire)
            if ratio > worst[0]:
                worst = (ratio, len(wire), len(resp), f"{name} {rdtype}{tc}")
        rows.append((f"EDNS {edns}" if edns else "no EDNS", *worst))
    return rows


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    flooders = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rates = [float(r) for r in (sys.argv[3] if len(sys.argv) > 3 else "0,20000").split(",")]
    with tempfile.TemporaryDirectory() as tmp, dnsd(Path(tmp)) as d:
        pid = d.proc.pid
        rss0 = rss_kib(pid)
        cpu0 = cpu_seconds(pid)
        ok, bad, el = legit_rate(d.host, d.port, seconds)
        cpu1 = cpu_seconds(pid)
        print(f"quiet:  {ok / el:8.0f} honest q/s, {bad} failed, dnsd CPU {cpu1 - cpu0:.2f} s, "
              f"RSS {rss0 / 1024:.1f} MiB")
        ctx = multiprocessing.get_context("spawn")
        for rate in rates:
            with ctx.Pool(flooders) as pool:
                sent_r = pool.starmap_async(
                    flood_worker,
                    [(d.host, d.port, 20_000, 1000 + i, seconds + 1, rate / flooders)
                     for i in range(flooders)])
                time.sleep(1.0)  # let the flood (and the corpus generation) get going
                cpu0 = cpu_seconds(pid)
                ok, bad, el = legit_rate(d.host, d.port, seconds)
                cpu1 = cpu_seconds(pid)
                sent = sum(sent_r.get(seconds + 120))
            d.proc.check()
            rss1 = rss_kib(pid)
            label = f"{rate:.0f}/s" if rate else "max"
            print(f"flood {label}: {ok / el:8.0f} honest q/s, {bad} failed (timeouts at 0.5 s), "
                  f"dnsd CPU {cpu1 - cpu0:.2f} s, hostile datagrams sent {sent} "
                  f"({sent / (seconds + 1):.0f}/s), RSS {rss1 / 1024:.1f} MiB")
        packets = [p for p in corpus(5000, 77) if len(p) >= 12 and not p[2] & 0x80]
        t0 = time.monotonic()
        replies = flood_tcp(d.host, d.port, packets, 50)
        print(f"tcp:    {len(packets)} hostile frames on 50 connections, {replies} replies "
              f"in {time.monotonic() - t0:.1f} s")
        ok, bad, el = legit_rate(d.host, d.port, 2.0)
        print(f"after:  {ok / el:8.0f} honest q/s, {bad} failed, RSS "
              f"{rss_kib(pid) / 1024:.1f} MiB")
        for label, ratio, qlen, rlen, what in amplification(d.host, d.port):
            print(f"amplification {label}: max response/query {ratio:.1f}x "
                  f"({qlen} -> {rlen} bytes, {what})")


if __name__ == "__main__":
    main()
