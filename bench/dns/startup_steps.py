#!/usr/bin/env python3
"""dnsd's first load of a big zone, in-process: each way of loading it, timed alone.

Each option runs in a fresh interpreter (so one's freed memory does not flatter the
next) on the same store, and prints wall and CPU seconds from the store's open to a view
that answers, the peak RSS (``ru_maxrss``) and the RSS once the load's garbage is gone:

- ``full``: ``snapshot()`` with every name as a ``Name`` (what dnsd did before), then
  ``ZoneView.load``;
- ``rows``: ``SELECT label FROM names``, one row per name, into the view's set of bytes;
- ``labels``: ``snapshot(NameLoad.LABELS)``, the labels as one string split in C (what
  dnsd does now), then ``ZoneView.load``;
- ``packed``: the labels kept as one sorted ``bytes`` blob with an ``array`` of offsets
  and looked up by bisection, instead of a set (the compact view the issue suggested).

After the load it times a label lookup (hits and misses, µs each, best of 5) on the
resulting structure: the set's ``in`` or the packed view's bisection.

usage: python -m bench.dns.startup_steps STORE [OPTION...]
       STORE: a SQLite file (bench/dns/gen.py's store/webgateway.db) or a postgresql:// URL
"""

from __future__ import annotations

import array
import asyncio
import bisect
import ipaddress
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from dnsd.zone import ZoneView
from webgateway.config import StoreConfig, ZoneConfig
from webgateway.model import NameLoad
from webgateway.sqlstore import SqlStore
from webgateway.storefactory import open_store

OPTIONS = ("full", "rows", "labels", "packed")
ZONE = "bench.test"


class Packed:
    """Sorted labels in one blob, ``offsets[i]`` the start of the i-th (a sentinel last)."""

    def __init__(self, labels: list[bytes]) -> None:
        labels.sort()
        self.blob = b"".join(labels)
        self.offsets = array.array("I", [0])
        pos = 0
        for label in labels:
            pos += len(label)
            self.offsets.append(pos)

    def __contains__(self, label: bytes) -> bool:
        blob, off = self.blob, self.offsets
        i = bisect.bisect_left(range(len(off) - 1), label, key=lambda k: blob[off[k]:off[k + 1]])
        return i < len(off) - 1 and blob[off[i]:off[i + 1]] == label


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def view() -> ZoneView:
    return ZoneView(ZoneConfig(
        name=ZONE, gateway_ipv4=(ipaddress.IPv4Address("198.18.255.254"),), gateway_ipv6=(),
        nameservers={f"ns1.{ZONE}": (ipaddress.IPv4Address("127.0.0.1"),)},
        hostmaster=f"hostmaster@{ZONE}"))


def store_config(store: str) -> StoreConfig:
    if store.startswith("postgres"):
        return StoreConfig(url=store, plaintext_keys=True)  # no keys read here
    return StoreConfig(Path(store))


async def load(store: str, option: str) -> tuple[ZoneView, object]:
    """The loaded view, and the labels structure its lookups would use."""
    st = await open_store(store_config(store))
    try:
        v = view()
        if option in ("full", "labels"):
            v.load(await st.snapshot(NameLoad.FULL if option == "full" else NameLoad.LABELS))
            return v, v.labels
        assert isinstance(st, SqlStore)
        if option == "rows":
            v.load(await st.snapshot(NameLoad.NONE))
            async with st._read():
                v.labels = {r[0].encode("ascii") for r in await st._all("SELECT label FROM names")}
            return v, v.labels
        snap = await st.snapshot(NameLoad.LABELS)
        assert snap.labels is not None
        v.load(replace(snap, labels=[]))  # the rest of the zone, as in the others
        return v, Packed(list(snap.labels))
    finally:
        await st.close()


def lookup_us(labels: object, probes: list[bytes]) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for p in probes:
            p in labels  # type: ignore[operator]  # noqa: B015
        best = min(best, time.process_time() - t0)
    return best / len(probes) * 1e6


def one(store: str, option: str) -> dict[str, float | str]:
    w0, c0 = time.perf_counter(), time.process_time()
    _view, labels = asyncio.run(load(store, option))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    probes = [f"h{i * 7919 % 1_000_000}".encode() for i in range(5000)]
    probes += [f"nx{i}".encode() for i in range(5000)]
    return {"option": option, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_mib": round(peak), "rss_mib": round(rss_mib()),
            "lookup_us": round(lookup_us(labels, probes), 3)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], sys.argv[3])))
        return
    store, options = sys.argv[1], sys.argv[2:] or list(OPTIONS)
    print("option   wall s  cpu s  peak MiB  RSS MiB  lookup µs")
    for option in options:
        out = subprocess.run([sys.executable, "-m", "bench.dns.startup_steps", "--one", store,
                              option], capture_output=True, text=True, check=True, timeout=300)
        r = json.loads(out.stdout)
        print(f"{r['option']:<8} {r['wall_s']:>6}  {r['cpu_s']:>5}  {r['peak_mib']:>8}  "
              f"{r['rss_mib']:>7}  {r['lookup_us']:>9}")


if __name__ == "__main__":
    main()
