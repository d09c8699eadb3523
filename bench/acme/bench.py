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

Prints one JSON line per run and a table; CPU is this process (certd + dnsd + store) vs
lego's processes (children), Pebble excluded on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certd.service import CertService  # noqa: E402
from dnsd.service import DnsService  # noqa: E402
from tests.pebble import start_pebble  # noqa: E402
from tests.support import ZONE, free_port, held_domain, make_config  # noqa: E402
from webgateway.addresses import parse_hostport  # noqa: E402
from webgateway.model import CertState, Name  # noqa: E402
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

    async def add_and_wait(self, fqdn: str, timeout: float = 120) -> float:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[fqdn] = fut
        t0 = time.time()  # wall clock, like Certificate.updated
        await held_domain(self.store, fqdn, "shop", self.owner_id)
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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50, help="sequential issuances")
    ap.add_argument("-m", type=int, default=200, help="issued at once")
    ap.add_argument("-p", type=int, default=20, help="lego parallel processes for the M run")
    ap.add_argument("--concurrency", type=int, default=4, help="certd acme.concurrency")
    ap.add_argument("--skip-lego", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wg-acme-bench-"))
    results: list[dict[str, Any]] = []
    dns_port = free_port()
    with start_pebble(work / "pebble", ("127.0.0.1", dns_port)) as pb:
        cfg = make_config(work, dns={"listen": [f"127.0.0.1:{dns_port}"]}, acme={
            "directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
            "resolver": f"127.0.0.1:{dns_port}", "concurrency": args.concurrency},
            store={"poll_interval": 0.02})
        store = SqliteStore(cfg.store.path, 0.02)
        await store.open()
        dnsd = DnsService(cfg, store, CollectorRegistry())
        certd = CertService(cfg, store, CollectorRegistry())
        await dnsd.start()
        await certd.start()
        api_port = free_port()
        runner = await txt_api(store, api_port)
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
            await b.add_and_wait("warm.example.org")

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
            if b is not None and b.task is not None:
                b.task.cancel()
            await runner.cleanup()
            await certd.stop()
            await dnsd.stop()
            await store.close()
    print()
    print(f"{'run':45} {'n':>4} {'fail':>4} {'p50 s':>7} {'p99 s':>7} {'wall s':>7} "
          f"{'cert/s':>7} {'CPU ms/cert':>11}")
    for r in results:
        print(f"{r['run']:45} {r['n']:>4} {r['fails']:>4} {r['p50_s']!s:>7} {r['p99_s']!s:>7} "
              f"{r['wall_s']:>7} {r['per_s']!s:>7} {r['cpu_ms_per_cert']:>11}")
    if args.keep:
        print("work directory:", work)
    else:
        shutil.rmtree(work, ignore_errors=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up (Pebble, lego) like Ctrl-C does


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(main())
