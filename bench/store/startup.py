#!/usr/bin/env python3
"""Cold start of a gateway on a big store, SQLite and PostgreSQL, beside Knot on the same zone.

``bench/dns/gen.py`` writes the ``bench.test`` zone (N names ``h*``, N/10 TXT names) as a
zone file for Knot and as a SQLite store; the same rows go into a throw-away PostgreSQL
(``tests/postgres.py``: initdb in a temp dir, its own port and socket, stopped by PID) by
COPY. Then, ROUNDS times and in turn, each server is launched cold (a new process group,
its PIDs recorded) and asked ``h1.bench.test A`` every 20 ms with dnspython until it
answers:

- ``knot``: knotd loading the zone file;
- ``dnsd-sqlite`` / ``dnsd-pg``: ``webgateway dnsd`` on each store;
- ``run-sqlite`` / ``run-pg``: ``webgateway run`` (dnsd, proxy, API in one process): first
  DNS answer, then until the API's ``/healthz`` answers (every service started), asking
  DNS meanwhile: "DNS stall" is the longest wait for an answer while the rest starts.

Reported per launch: seconds to the first answer (and to ready, for ``run``), the CPU
seconds the server's processes used until then (robust to the box's other load), and
their RSS 1 s after ready. PostgreSQL's own processes are not in the gateway's figures.
A launch is stopped (SIGTERM to its group, then SIGKILL) before the next starts.

usage: PYTHONPATH=. python -m bench.store.startup [NAMES=1000000] [ROUNDS=2] [KINDS...]
env:   STATE=/tmp/webgateway-bench-store   where the zone, stores and logs go
       CODE=.     the checkout whose webgateway the gateways run (e.g. another branch's
                  worktree, to compare; the venv's interpreter either way)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query

from bench.dns import gen
from tests.postgres import start_postgres
from tests.support import free_port

KINDS = ("knot", "dnsd-sqlite", "dnsd-pg", "run-sqlite", "run-pg")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Launch:
    kind: str
    first_answer: float
    ready: float
    dns_stall: float
    cpu: float
    rss_mib: float


def group_pids(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if os.getpgid(int(d.name)) == pgid:
                    out.append(int(d.name))
    return out


def cpu_s(pgid: int) -> float:
    ticks = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def rss_mib(pgid: int) -> float:
    kib = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024


def answers(port: int) -> bool:
    q = dns.message.make_query("h1.bench.test", "A")
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.2)
    except (TimeoutError, OSError, dns.exception.DNSException):
        return False
    return any("198.18.255.254" in str(rrset) for rrset in r.answer)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], seconds: float = 300
         ) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and proc.poll() is None:
        if check():
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args!r} exited or did not answer in time: see its log")


@contextlib.contextmanager
def launched(cmd: list[str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def knot_conf(out: Path, port: int) -> Path:
    d = out / "knot"
    d.mkdir(exist_ok=True)
    conf = d / "knot.conf"
    conf.write_text(f"""server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: notice
database:
    storage: "{d}"
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: bench.test
    file: "{out / 'bench.test.zone'}"
""")
    return conf


def gateway_conf(out: Path, name: str, store: str, dns_port: int, api_port: int) -> Path:
    """gen.py's config with its own ports for every listener and the given [store]."""
    text = (out / "webgateway.toml").read_text()
    text = re.sub(r'listen = \["127\.0\.0\.1:\d+"\]', f'listen = ["127.0.0.1:{dns_port}"]', text)
    if store.startswith("postgresql"):
        text = text.replace('path = "store/webgateway.db"',
                            f'url = "{store}"\nkey_file = "{key_file(out)}"')
    text += f"""[proxy]
https_listen = ["127.0.0.1:{free_port()}"]
http_listen = ["127.0.0.1:{free_port()}"]
[api]
listen = "127.0.0.1:{api_port}"
admin_token_file = "admin.token"
"""
    conf = out / f"{name}.toml"
    conf.write_text(text)
    return conf


def key_file(out: Path) -> Path:
    """The fleet's key for private keys in PostgreSQL (32 random bytes, base64, 0600)."""
    path = out / "store.key"
    if not path.exists():
        path.touch(0o600)
        path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


def launch(kind: str, out: Path, stores: dict[str, str], code: Path) -> Launch:
    dns_port = free_port()
    if kind == "knot":
        cmd = ["knotd", "-c", str(knot_conf(out, dns_port))]
        api = ""
    else:
        service, backend = kind.split("-")
        api_port = free_port()
        conf = gateway_conf(out, kind, stores[backend], dns_port, api_port)
        cmd = [sys.executable, "-m", "webgateway.cli", service, "--config", str(conf)]
        api = f"http://127.0.0.1:{api_port}/healthz" if service == "run" else ""
    with launched(cmd, out / f"{kind}.log", code) as proc:
        first = wait(lambda: answers(dns_port), proc)
        ready, stall = (0.0, 0.0) if not api else until_ready(api, dns_port, proc)
        cpu = cpu_s(proc.pid)
        time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: see {out / f'{kind}.log'}")
        return Launch(kind, first, first + ready, stall, cpu, rss_mib(proc.pid))


def until_ready(api: str, dns_port: int, proc: subprocess.Popen[bytes], seconds: float = 300
                ) -> tuple[float, float]:
    """Seconds until ``api`` is healthy, and the longest wait for a DNS answer meanwhile
    (dnsd shares its process with the services still starting)."""
    t0 = last = time.perf_counter()
    stall = 0.0
    while time.perf_counter() - t0 < seconds and proc.poll() is None:
        if answers(dns_port):
            now = time.perf_counter()
            stall, last = max(stall, now - last), now
        if healthy(api):
            return time.perf_counter() - t0, max(stall, time.perf_counter() - last)
    raise RuntimeError(f"{proc.args!r} exited or was not ready in time: see its log")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    kinds = sys.argv[3:] or list(KINDS)
    out = Path(os.environ.get("STATE", "/tmp/webgateway-bench-store")) / f"z{n}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "bench/dns/gen.py", str(out), str(n), "0"], check=True)
    with start_postgres() as pg:
        url = pg.new_database()
        asyncio.run(gen.load_postgres(url, n))
        print(f"# {n} names in SQLite and PostgreSQL, {time.monotonic() - t0:.0f} s;"
              f" load average {os.getloadavg()[0]:.2f}", flush=True)
        stores = {"sqlite": "store/webgateway.db", "pg": url}
        code = Path(os.environ.get("CODE", ".")).resolve()
        print("kind          first answer s  ready s  DNS stall s  cpu s  rss MiB", flush=True)
        for r in range(rounds):
            for kind in kinds:
                x = launch(kind, out, stores, code)
                print(f"{x.kind:<13} {x.first_answer:>14.2f}  {x.ready:>7.2f}  "
                      f"{x.dns_stall:>11.2f}  {x.cpu:>5.2f}"
                      f"  {x.rss_mib:>7.0f}   (round {r + 1}, load {os.getloadavg()[0]:.2f})",
                      flush=True)


if __name__ == "__main__":
    main()
