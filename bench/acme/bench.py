"""certd vs lego: time from "custom domain added" to "certificate stored", against one Pebble.

Everything runs on loopback: Pebble (Debian package, started here via tests/pebble.py)
validates DNS-01 by querying our dnsd; certd and dnsd run in this process on one SQLite
store. lego (exec DNS provider) gets its TXT into the same store through a tiny HTTP API
(the shape of pebble-challtestsrv's /set-txt, /clear-txt), so both clients are validated
by the same DNS server and CA.

  certd: N sequential custom domains (latency each), then M added at once. "Added" is
         a claim marked verified in the store (what certd does once it sees the owner's
         CNAMEs), so the figure is the issuance, as lego's is.
  lego:  N sequential issuances, then M with P parallel processes.
  --claims: only certd, M pending claims at once whose CNAMEs a Knot DNS host serves, so
         certd's own claim check is timed too; prints where the time went (probe.py).

Prints one JSON line per run and a table; CPU is this process (certd + dnsd + store) vs
lego's processes (children), Pebble excluded on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from probe import Probe, proc_cpu  # noqa: E402

from certd.service import CertService  # noqa: E402
from dnsd.service import DnsService  # noqa: E402
from tests.knot import Knot, knot_missing, owner_zone  # noqa: E402
from tests.pebble import Pebble, start_pebble  # noqa: E402
from tests.support import ZONE, free_port, held_domain, make_config  # noqa: E402
from webgateway.addresses import parse_hostport  # noqa: E402
from webgateway.dnsname import new_challenge_label  # noqa: E402
from webgateway.model import CertState, Domain, Name  # noqa: E402
from webgateway.sqlite_store import SqliteStore  # noqa: E402

HOOK = Path(__file__).resolve().parent / "lego_hook.sh"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(label: str, lat: list[float], wall: float, cpu: float, fails: int) -> dict[str, Any]:
    n = len(lat)
    return {
        "run": label, "n": n, "fails": fails,
        "p50_s": round(statistics.median(lat), 3) if lat else None,
        "p99_s": round(pct(lat, 99), 3) if lat else None,
        "max_s": round(max(lat), 3) if lat else None,
        "wall_s": round(wall, 2),
        "per_s": round(n / wall, 2) if wall else None,
        "cpu_ms_per_cert": round(cpu * 1000 / max(n, 1), 1),
    }


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Bench:
    """Adds domains and learns when their certificate was stored from the store's change
    feed (one follower, not one polling loop per domain: that would cost more CPU than
    certd itself). The latency ends at the row's own ``updated`` time, so a follower
    that lags behind a busy store does not inflate it."""

    def __init__(self, work: Path, store: SqliteStore, owner_id: int) -> None:
        self.work = work
        self.store = store
        self.owner_id = owner_id
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.serial = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.serial = await self.store.serial()
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            cur = await self.store.wait_changed(self.serial, 1.0)
            if cur == self.serial:
                continue
            cs = await self.store.changes_since(self.serial)
            self.serial = cur if cs is None else cs.serial
            for cid, cert in (cs.certificates.items() if cs is not None else ()):
                fut = self.waiting.get(cid)
                if (fut is not None and not fut.done() and cert is not None
                        and cert.state == CertState.VALID):
                    fut.set_result(cert.updated)  # when the store wrote the row

    async def add_and_wait(self, fqdn: str, timeout: float = 120,
                           challenge: str | None = None) -> float:
        """Latency of one domain. With ``challenge``, a pending claim (the owner's CNAMEs
        are in place at their DNS host, so certd's check proves it); without, a claim
        marked verified directly."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[fqdn] = fut
        t0 = time.time()  # wall clock, like Certificate.updated
        if challenge is None:
            await held_domain(self.store, fqdn, "shop", self.owner_id)
        else:
            await self.store.put_domain(Domain(fqdn, "shop", self.owner_id, challenge), 100_000)
        done = await asyncio.wait_for(fut, timeout)
        return done - t0


async def txt_api(store: SqliteStore, port: int) -> web.AppRunner:
    async def set_txt(req: web.Request) -> web.Response:
        body = await req.json()
        await store.add_txt(body["host"].rstrip(".").lower(), body["value"])
        return web.Response(text="ok")

    async def clear_txt(req: web.Request) -> web.Response:
        body = await req.json()
        await store.remove_txt(body["host"].rstrip(".").lower())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/set-txt", set_txt)
    app.router.add_post("/clear-txt", clear_txt)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def lego_one(domain: str, lpath: Path, env: dict[str, str], pebble_dir: str,
                   dns: str, log: Path) -> float | None:
    t0 = time.monotonic()
    cmd = ["lego", "--server", pebble_dir, "--accept-tos", "--email", "bench@example.com",
           "--path", str(lpath), "--key-type", "ec256", "--dns", "exec",
           "--dns.resolvers", dns, "--dns.disable-cp", "-d", domain, "run"]
    with log.open("ab") as f:
        p = await asyncio.create_subprocess_exec(*cmd, stdout=f, stderr=f, env=env)
        try:
            rc = await asyncio.wait_for(p.wait(), 90)
        except TimeoutError:
            p.kill()
            await p.wait()
            return None
    return time.monotonic() - t0 if rc == 0 else None


@dataclass
class Gateway:
    """dnsd + certd on one SQLite store, one Pebble validating through that dnsd."""

    pebble: Pebble
    store: SqliteStore
    bench: Bench
    dns_port: int


@contextlib.asynccontextmanager
async def gateway(work: Path, concurrency: int, resolver: int | None = None,
                  ) -> AsyncIterator[Gateway]:
    """Started, with the zone's certificate and one custom domain ("warm") issued.
    ``resolver``: the port of the DNS server certd asks about claims (default: our dnsd)."""
    dns_port = free_port()
    with start_pebble(work / "pebble", ("127.0.0.1", dns_port)) as pb:
        cfg = make_config(work, dns={"listen": [f"127.0.0.1:{dns_port}"]}, acme={
            "directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
            "resolver": f"127.0.0.1:{resolver or dns_port}", "concurrency": concurrency},
            store={"poll_interval": 0.02})
        store = SqliteStore(cfg.store.path, 0.02)
        await store.open()
        dnsd = DnsService(cfg, store, CollectorRegistry())
        certd = CertService(cfg, store, CollectorRegistry())
        await dnsd.start()
        await certd.start()
        b: Bench | None = None
        try:
            owner = await store.create_owner("bench", "h")
            await store.put_name(Name("shop", owner.id, (parse_hostport("127.0.0.1:9"),)), 10)
            b = Bench(work, store, owner.id)
            await b.start()
            end = time.monotonic() + 60
            while (c := await store.get_certificate("zone")) is None or c.state != CertState.VALID:
                assert time.monotonic() < end, "zone certificate not issued"
                await asyncio.sleep(0.05)
            await b.add_and_wait(WARM, challenge=CHALLENGES.get(WARM))
            yield Gateway(pb, store, b, dns_port)
        finally:
            if b is not None and b.task is not None:
                b.task.cancel()
            await certd.stop()
            await dnsd.stop()
            await store.close()


WARM = "warm.example.org"
OWNER_ZONE = "example.org"
#: fqdn -> challenge label of the claims mode (the owners' CNAMEs name these labels)
CHALLENGES: dict[str, str] = {}


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'run':45} {'n':>4} {'fail':>4} {'p50 s':>7} {'p99 s':>7} {'wall s':>7} "
          f"{'cert/s':>7} {'CPU ms/cert':>11}")
    for r in results:
        print(f"{r['run']:45} {r['n']:>4} {r['fails']:>4} {r['p50_s']!s:>7} {r['p99_s']!s:>7} "
              f"{r['wall_s']:>7} {r['per_s']!s:>7} {r['cpu_ms_per_cert']:>11}")


async def claims(args: argparse.Namespace, work: Path) -> None:
    """M custom domains claimed at once, each proved by the owner's two CNAMEs at their DNS
    host (Knot, already in place), until every certificate is stored: the whole path certd
    runs for a new domain, claim check included. Prints where the time went."""
    if knot_missing():
        sys.exit("the claims mode needs knotd (apt: knot)")
    names = [f"c{i}.{OWNER_ZONE}" for i in range(args.m)]
    CHALLENGES.update({fqdn: new_challenge_label() for fqdn in [WARM, *names]})
    records = "".join(
        f"{fqdn}. 60 CNAME shop.{ZONE}.\n_acme-challenge.{fqdn}. 60 CNAME {chal}._acme.{ZONE}.\n"
        for fqdn, chal in CHALLENGES.items())
    knot_port = free_port()
    knot = Knot(work / "knot", "127.0.0.1", knot_port, {OWNER_ZONE: owner_zone(OWNER_ZONE)
                                                         + records})
    try:
        async with gateway(work, args.concurrency, resolver=knot_port) as gw:
            probe = Probe()
            probe.install(gw.store)
            pebble0, knot0 = proc_cpu(gw.pebble.proc.pid), proc_cpu(knot.proc.pid)
            c0, t0, w0 = cpu_self(), time.monotonic(), time.time()
            got = await asyncio.gather(
                *(gw.bench.add_and_wait(f, 120, CHALLENGES[f]) for f in names),
                return_exceptions=True)
            wall = time.monotonic() - t0
            cpu, pebble_cpu = cpu_self() - c0, proc_cpu(gw.pebble.proc.pid) - pebble0
            knot_cpu = proc_cpu(knot.proc.pid) - knot0
            probe.uninstall()
            lat = [x for x in got if isinstance(x, float)]
            for e in (x for x in got if not isinstance(x, float)):
                print("failed:", repr(e), file=sys.stderr)
            row = summary(f"certd {args.m} claims at once (concurrency={args.concurrency})",
                          lat, wall, cpu, len(got) - len(lat))
            row.update(all_issued_s=round(max(lat), 3) if lat else None,
                       pebble_cpu_s=round(pebble_cpu, 2), knot_cpu_s=round(knot_cpu, 2),
                       self_cpu_s=round(cpu, 2), loadavg=os.getloadavg()[0])
            print(json.dumps(row), flush=True)
            print_table([row])
            print(f"\nuntil all issued: {row['all_issued_s']} s; CPU: certd+dnsd+store"
                  f" {cpu:.2f} s, Pebble {pebble_cpu:.2f} s, Knot {knot_cpu:.2f} s"
                  f" (load average {os.getloadavg()[0]:.2f})")
            print(f"\n{'where (summed over concurrent orders)':40} {'count':>6} {'total s':>8}"
                  f" {'mean ms':>8}")
            for what, n, total, mean in probe.rows():
                print(f"{what:40} {n:>6} {total:>8.2f} {mean:>8.2f}")
            phases(probe, w0)
    finally:
        knot.stop()


def phases(probe: Probe, w0: float) -> None:
    """Median and last time (from the start) at which the orders reached each milestone."""
    by_chal = {chal: dict(probe.marks.get(chal, {})) for f, chal in CHALLENGES.items()
               if f != WARM}
    for fqdn, chal in CHALLENGES.items():
        if chal in by_chal:
            for phase, t in probe.marks.get(fqdn, {}).items():
                by_chal[chal].setdefault(phase, t)
    order = ("verified", "order created", "TXT added", "TXT propagated", "domain active")
    print(f"\n{'milestone (s from the start)':40} {'p50':>8} {'max':>8}")
    for phase in order:
        ts = [m[phase] - w0 for m in by_chal.values() if phase in m]
        if ts:
            print(f"{phase:40} {statistics.median(ts):>8.2f} {max(ts):>8.2f}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50, help="sequential issuances")
    ap.add_argument("-m", type=int, default=200, help="issued at once")
    ap.add_argument("-p", type=int, default=20, help="lego parallel processes for the M run")
    ap.add_argument("--concurrency", type=int, default=4, help="certd acme.concurrency")
    ap.add_argument("--skip-lego", action="store_true")
    ap.add_argument("--claims", action="store_true",
                    help="only M claims proved via CNAME at Knot, with where the time went")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wg-acme-bench-"))
    try:
        if args.claims:
            await claims(args, work)
        else:
            await compare(args, work)
    finally:
        if args.keep:
            print("work directory:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


async def compare(args: argparse.Namespace, work: Path) -> None:
    results: list[dict[str, Any]] = []
    async with gateway(work, args.concurrency) as gw:
        b, store, pb, dns_port = gw.bench, gw.store, gw.pebble, gw.dns_port
        api_port = free_port()
        runner = await txt_api(store, api_port)
        try:
            c0, t0 = cpu_self(), time.monotonic()
            lat = [await b.add_and_wait(f"s{i}.example.org") for i in range(args.n)]
            results.append(summary(f"certd {args.n} sequential", lat,
                                   time.monotonic() - t0, cpu_self() - c0, 0))
            print(json.dumps(results[-1]), flush=True)

            c0, t0 = cpu_self(), time.monotonic()
            got = await asyncio.gather(*(b.add_and_wait(f"c{i}.example.org", 300)
                                         for i in range(args.m)), return_exceptions=True)
            lat = [x for x in got if isinstance(x, float)]
            results.append(summary(f"certd {args.m} at once (concurrency={args.concurrency})",
                                   lat, time.monotonic() - t0, cpu_self() - c0,
                                   len(got) - len(lat)))
            print(json.dumps(results[-1]), flush=True)

            if not args.skip_lego and shutil.which("lego"):
                env = {**os.environ, "LEGO_CA_CERTIFICATES": str(pb.ca_bundle),
                       "EXEC_PATH": str(HOOK), "EXEC_POLLING_INTERVAL": "1",
                       "EXEC_PROPAGATION_TIMEOUT": "10",
                       "TXT_API": f"http://127.0.0.1:{api_port}"}
                dns = f"127.0.0.1:{dns_port}"
                log = work / "lego.log"
                await lego_one(f"warm.{ZONE}", work / "lego-seq", env, pb.directory, dns, log)
                c0, t0 = cpu_children(), time.monotonic()
                outs = [await lego_one(f"l{i}.{ZONE}", work / "lego-seq", env, pb.directory,
                                       dns, log) for i in range(args.n)]
                lat = [x for x in outs if x is not None]
                results.append(summary(f"lego {args.n} sequential", lat,
                                       time.monotonic() - t0, cpu_children() - c0,
                                       len(outs) - len(lat)))
                print(json.dumps(results[-1]), flush=True)
                for k in range(args.p):  # one account per parallel slot, made beforehand
                    await lego_one(f"w{k}.{ZONE}", work / f"lego-p{k}", env, pb.directory,
                                   dns, log)
                sem = asyncio.Semaphore(args.p)
                slots = asyncio.Queue[int]()
                for k in range(args.p):
                    slots.put_nowait(k)

                async def par(i: int) -> float | None:
                    async with sem:
                        k = await slots.get()
                        try:
                            return await lego_one(f"p{i}.{ZONE}", work / f"lego-p{k}", env,
                                                  pb.directory, dns, log)
                        finally:
                            slots.put_nowait(k)

                c0, t0 = cpu_children(), time.monotonic()
                outs = await asyncio.gather(*(par(i) for i in range(args.m)))
                lat = [x for x in outs if x is not None]
                results.append(summary(f"lego {args.m} with {args.p} processes", lat,
                                       time.monotonic() - t0, cpu_children() - c0,
                                       len(outs) - len(lat)))
                print(json.dumps(results[-1]), flush=True)
        finally:
            await runner.cleanup()
    print_table(results)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up (Pebble, lego) like Ctrl-C does


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(main())
