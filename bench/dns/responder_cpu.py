#!/usr/bin/env python3
"""CPU cost of ``Responder.handle`` in-process: no sockets, no kernel, just our code.

The zone is the benchmark's shape (N reserved names ``h*``, gateway A); the queries are
exact-name A queries with EDNS, each name in a random 0x20 letter case so every query is
distinct bytes. "uncached" is the first pass through a fresh responder (reply-cache miss:
hand parser, packed per-node answer, reply assembly, cache insert); "cached" is a second
pass over the same bytes (one dict hit). Each figure is the best of ROUNDS passes of
process CPU time, as µs per query, so other load on the machine inflates it least.

usage: python -m bench.dns.responder_cpu [NAMES=10000] [ROUNDS=7]
"""

from __future__ import annotations

import ipaddress
import random
import sys
import time
from collections.abc import Callable

import dns.message

from dnsd.responder import Responder
from dnsd.zone import ZoneView
from webgateway.config import ZoneConfig
from webgateway.model import Name, Snapshot

ZONE = "bench.test"


def view(n: int) -> ZoneView:
    cfg = ZoneConfig(
        name=ZONE,
        gateway_ipv4=(ipaddress.IPv4Address("198.18.255.254"),),
        gateway_ipv6=(),
        nameservers={f"ns1.{ZONE}": (ipaddress.IPv4Address("127.0.0.1"),)},
        hostmaster=f"hostmaster@{ZONE}",
    )
    v = ZoneView(cfg)
    v.load(Snapshot(1, {f"h{i}": Name(f"h{i}", 1, ()) for i in range(n)}, {}, {}, {}))
    return v


def queries(n: int, rnd: random.Random) -> list[bytes]:
    out = []
    for i in range(n):
        name = "".join(c.upper() if rnd.random() < 0.5 else c for c in f"h{i}.{ZONE}")
        m = dns.message.make_query(name, "A", use_edns=0, payload=1232)
        m.id = rnd.randrange(65536)
        out.append(m.to_wire())
    return out


def per_query(fn: Callable[[bytes], object], qs: list[bytes]) -> float:
    t0 = time.process_time()
    for q in qs:
        fn(q)
    return (time.process_time() - t0) / len(qs) * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    v = view(n)
    qs = queries(n, random.Random(1))
    uncached, cached = [], []
    for _ in range(rounds):
        r = Responder(v, cache_size=2 * n)
        uncached.append(per_query(r.handle, qs))
        cached.append(per_query(r.handle, qs))
    print(f"{n} names, best of {rounds}: uncached {min(uncached):.3f} µs/q, "
          f"cached {min(cached):.3f} µs/q")


if __name__ == "__main__":
    main()
