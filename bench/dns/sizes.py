#!/usr/bin/env python3
"""DO=1 response sizes of two servers for the same questions (run.sh DNSSEC=1).

usage: sizes.py HOST KNOT_PORT DNSD_PORT

Each question goes to both over UDP with EDNS (1232-byte buffer, DO=1); a markdown row per
question: the rcode and the (answer, authority, additional) record counts each sent, and
the bytes. A truncated answer is asked again over TCP (its size is then the TCP one).
"""

from __future__ import annotations

import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode

ZONE = "bench.test"
QUESTIONS = (
    (f"h1.{ZONE}", "A", "name (A)"),
    (f"t1.{ZONE}", "TXT", "TXT"),
    (f"h1.{ZONE}", "AAAA", "NODATA"),
    (f"nx123.{ZONE}", "A", "NXDOMAIN"),
    (ZONE, "SOA", "apex SOA"),
    (ZONE, "NS", "apex NS"),
    (ZONE, "DNSKEY", "DNSKEY"),
)


def ask(host: str, port: int, name: str, rdtype: str) -> tuple[int, str]:
    q = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0, payload=1232)
    raw = dns.query.udp(q, host, port=port, timeout=3, ignore_trailing=True)
    if raw.flags & dns.flags.TC:
        raw = dns.query.tcp(q, host, port=port, timeout=3)
    size = len(raw.to_wire())
    counts = tuple(sum(len(r) for r in sec) for sec in (raw.answer, raw.authority,
                                                        raw.additional))
    return size, f"{dns.rcode.to_text(raw.rcode())} {counts[0]}/{counts[1]}/{counts[2] + 1}"


def main() -> None:
    host, kport, dport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("| question | Knot (rcode an/ns/ar) | Knot bytes | dnsd (rcode an/ns/ar) |"
          " dnsd bytes | dnsd/Knot |")
    print("|---|---|---|---|---|---|")
    for name, rdtype, what in QUESTIONS:
        ks, kc = ask(host, kport, name, rdtype)
        ds, dc = ask(host, dport, name, rdtype)
        print(f"| {what}: {name} {rdtype} | {kc} | {ks} | {dc} | {ds} | {ds / ks:.2f} |")


if __name__ == "__main__":
    main()
