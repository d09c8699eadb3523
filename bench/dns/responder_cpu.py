#!/usr/bin/env python3
"""CPU cost of ``Responder.handle`` in-process: no sockets, no kernel, just our code.

The zone is the benchmark's shape (N reserved names ``h*``, gateway A); the queries are
exact-name A queries with EDNS, each name in a random 0x20 letter case so every query is
distinct bytes. "uncached" is the first pass through a fresh responder (reply-cache miss:
hand parser, packed per-node answer, reply assembly, cache insert); "cached" is a second
pass over the same bytes; "cached, new 0x20 case" a third pass over the same questions in
another random case, as a resolver asks again (the case-insensitive key must hit). Then
the steps of a hit, each timed alone over the same queries. Each figure is the best of
ROUNDS passes of process CPU time, as µs per query, so other load inflates it least.

With ``do`` as third argument the zone is signed ([dnssec] enabled) and the queries set
DO=1; then "signing" is the very first pass (one ECDSA signature per name), "uncached" a
pass after a zone change (reply caches gone, RRSIGs reused from the signature cache).

usage: python -m bench.dns.responder_cpu [NAMES=10000] [ROUNDS=7] [do]
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
from webgateway import zonekeys
from webgateway.config import DnssecConfig, ZoneConfig
from webgateway.model import Name, Snapshot

ZONE = "bench.test"


def view(n: int, do: bool = False) -> ZoneView:
    cfg = ZoneConfig(
        name=ZONE,
        gateway_ipv4=(ipaddress.IPv4Address("198.18.255.254"),),
        gateway_ipv6=(),
        nameservers={f"ns1.{ZONE}": (ipaddress.IPv4Address("127.0.0.1"),)},
        hostmaster=f"hostmaster@{ZONE}",
    )
    v = ZoneView(cfg, None, DnssecConfig(enabled=do))
    keys = [zonekeys.generate()]
    v.private_keys.update(zonekeys.privates(keys))  # as dnsd's shell opens them
    meta = {zonekeys.META_KEY: zonekeys.dump(keys)} if do else {}
    v.load(Snapshot(1, {f"h{i}": Name(f"h{i}", 1, ()) for i in range(n)}, {}, {}, {}, meta))
    return v


def steps(qs: list[bytes], rounds: int) -> dict[str, float]:
    """The cache hit's steps, each alone over ``qs`` (cost of a bare loop subtracted)."""
    cache = {q[2:].lower(): q for q in qs}
    hdr, tail = qs[0][2:12], qs[0][-15:]

    def bare(q: bytes) -> object:
        return q

    def lower(q: bytes) -> object:
        return q[2:].lower()

    def lookup(q: bytes) -> object:
        return cache.get(q[2:].lower())

    def check(q: bytes) -> object:
        return q.endswith(tail)

    def build(q: bytes) -> object:
        return q[:2] + hdr + q[12:30] + tail

    base = min(per_query(bare, qs) for _ in range(rounds))
    return {f.__name__: min(per_query(f, qs) for _ in range(rounds)) - base
            for f in (lower, lookup, check, build)}


def queries(n: int, rnd: random.Random, do: bool = False) -> list[bytes]:
    out = []
    for i in range(n):
        name = "".join(c.upper() if rnd.random() < 0.5 else c for c in f"h{i}.{ZONE}")
        m = dns.message.make_query(name, "A", use_edns=0, payload=1232, want_dnssec=do)
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
    do = len(sys.argv) > 3 and sys.argv[3] == "do"
    v = view(n, do)
    qs = queries(n, random.Random(1), do)
    recased = queries(n, random.Random(2), do)
    uncached, cached, case20 = [], [], []
    if do:
        signing = per_query(Responder(v, cache_size=2 * n).handle, qs)
        print(f"{n} names, DO=1, first pass: signing {signing:.3f} µs/q")
    for _ in range(rounds):
        v.bump(v.serial)
        r = Responder(v, cache_size=2 * n)
        uncached.append(per_query(r.handle, qs))
        cached.append(per_query(r.handle, qs))
        hits = r.hits
        case20.append(per_query(r.handle, recased))
        assert r.hits - hits == len(recased), "a new 0x20 case missed the reply cache"
    print(f"{n} names, best of {rounds}: uncached {min(uncached):.3f} µs/q, "
          f"cached {min(cached):.3f} µs/q, cached new 0x20 case {min(case20):.3f} µs/q")
    print("hit steps, µs/q: " + ", ".join(f"{k} {v:.3f}" for k, v in steps(qs, rounds).items()))


if __name__ == "__main__":
    main()
