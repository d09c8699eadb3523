#!/usr/bin/env python3
"""CPU time of a signed AXFR in-process: the record stream dnsd sends a secondary.

The zone is the benchmark's shape (N reserved names ``h*``, gateway A), signed; the first
pass signs every RRset and NSEC (two signatures a name), the second finds them in the
signature cache while it holds them (``[dnssec] signature_cache``, 100,000 RRsets a
generation: a zone with more signs again; CACHE sets another size). Prints process CPU seconds,
records and the process's peak RSS for each pass.

usage: python -m bench.dns.signed_axfr [NAMES=100000] [CACHE]
"""

from __future__ import annotations

import resource
import sys
import time

from bench.dns.responder_cpu import ZONE, view
from dnsd import wire
from dnsd.journal import Journal
from dnsd.transfer import Transfers


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t0 = time.process_time()
    v = view(n, do=True)
    print(f"{n} names: view loaded in {time.process_time() - t0:.1f} s CPU")
    if len(sys.argv) > 2:
        assert v.signer is not None
        v.signer.cache_size = int(sys.argv[2])
    xfr = Transfers(Journal(v), None, (), lambda data, tcp: None)
    zone = wire.name_to_wire(ZONE)
    for label in ("first (signs)", "second"):
        assert v.signer is not None
        signed = v.signer.signed
        t0 = time.process_time()
        records = sum(1 for _ in xfr._axfr(zone))
        cpu = time.process_time() - t0
        print(f"{label}: {records} records, {v.signer.signed - signed} signatures,"
              f" {cpu:.1f} s CPU ({cpu / n * 1e6:.0f} µs a name),"
              f" peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


if __name__ == "__main__":
    main()
