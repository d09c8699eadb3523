#!/usr/bin/env python3
"""CPU per DO=1 query when resolvers ask more distinct names than the signature cache holds.

Queries follow a Zipf law (s=1) over N names, as real traffic does: a hot head asked again
and again, a long tail asked once. Each signature-cache policy runs over the same queries
in the same process, side by side: the previous one (cleared whole when full) and the
current two generations (``dnsd.signer``). A first pass of Q queries fills the caches, the
second is measured: process CPU µs a query and signatures made.

usage: python -m bench.dns.signer_cache [NAMES=1000000] [QUERIES=400000]
"""

from __future__ import annotations

import itertools
import os
import random
import sys

import dns.message

from bench.dns.responder_cpu import ZONE, per_query, view
from dnsd.responder import Responder
from dnsd.signer import Signer, _Entry, _Key


class ClearAll(Signer):
    """The policy before two generations: a full cache is emptied at once."""

    def _keep(self, key: _Key, entry: _Entry) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = entry


def zipf_queries(n: int, count: int, rnd: random.Random) -> list[bytes]:
    cum = list(itertools.accumulate(1.0 / (k + 1) for k in range(n)))
    out = []
    for i in rnd.choices(range(n), cum_weights=cum, k=count):
        m = dns.message.make_query(f"h{i}.{ZONE}", "A", use_edns=0, payload=1232,
                                   want_dnssec=True)
        out.append(m.to_wire())
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 400_000
    v = view(n, do=True)
    assert v.signer is not None
    keys = v.zone_keys
    rnd = random.Random(1)
    warm, measured = zipf_queries(n, count, rnd), zipf_queries(n, count, rnd)
    print(f"{n} names, Zipf s=1, {count} queries, {len(set(measured))} distinct;"
          f" load {os.getloadavg()[0]:.2f}")
    for policy in (ClearAll, Signer):
        v.signer = policy(keys)
        v.bump(v.serial)
        r = Responder(v)
        per_query(r.handle, warm)
        signed = v.signer.signed
        cpu = per_query(r.handle, measured)
        print(f"{policy.__name__:8}: {cpu:.2f} µs/q, {v.signer.signed - signed} signatures")


if __name__ == "__main__":
    main()
