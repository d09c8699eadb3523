#!/usr/bin/env python3
"""API writes per second on each store backend: ``PUT /v1/names/...`` from wrk.

For each backend (SQLite, ``synchronous=FULL``: every acknowledged write is on disk; and
PostgreSQL, a throw-away server from ``tests/postgres.py`` run as the fleet tests run it:
``fsync=off, synchronous_commit=off``, so its figure is the store's logic and round trips,
not the disk), a fresh ``webgateway api`` is launched on its own port and store, an
owner is created through ``POST /v1/owners``, and wrk sends ``PUT /v1/names/<new label>``
(one backend, terminate) for SECONDS over CONNECTIONS keep-alive connections: each
request creates a name (201). Reported: writes/s, non-2xx answers, wrk's latency
percentiles, and the CPU the API process (and, for PostgreSQL, the server's processes)
used per write, read from /proc around the run.

usage: PYTHONPATH=. python -m bench.store.writes [SECONDS=5] [CONNECTIONS=8] [BACKENDS...]
       BACKENDS: sqlite pg (default both). Needs wrk (apt: wrk).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.store.startup import cpu_s, healthy, key_file, launched
from tests.postgres import start_postgres
from tests.support import free_port

LUA = """
local n = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", "w" .. threads .. "-")
end
function init(args)
  token = args[1]
end
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/names/" .. prefix .. n,
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"},
    '{"backends": ["[fd00::5]:8080"]}')
end
"""


def config(root: Path, store: str, port: int) -> Path:
    section = (f'url = "{store}"\nkey_file = "{key_file(root)}"' if store.startswith("postgresql")
               else 'path = "store/wg.db"')
    conf = root / "api.toml"
    conf.write_text(f"""[zone]
name = "bench.test"
gateway_ipv4 = ["198.18.255.254"]
nameservers = {{ "ns1.bench.test" = ["127.0.0.1"] }}
[api]
listen = "127.0.0.1:{port}"
admin_token_file = "admin.token"
max_names_per_owner = 1000000
[store]
{section}
certs_dir = "store/certs"
[log]
level = "warning"
""")
    return conf


def post_owner(port: int, admin: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/owners", data=json.dumps({"name": "writer"}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.load(r)["token"])


def pg_server_cpu(postmaster: int) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and its children."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(d.name) == postmaster or int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextlib.contextmanager
def backend(kind: str) -> Iterator[tuple[str, int | None]]:
    """(store for the config, the PostgreSQL postmaster's PID or None)."""
    if kind == "sqlite":
        yield "store/wg.db", None
        return
    with start_postgres() as pg:
        assert pg.proc is not None
        yield pg.new_database(), pg.proc.pid


def run(kind: str, seconds: int, conns: int) -> str:
    with tempfile.TemporaryDirectory(prefix="wg-bench-writes-") as tmp, backend(kind) as (
        store, postmaster,
    ):
        root = Path(tmp)
        port = free_port()
        conf = config(root, store, port)
        cmd = [sys.executable, "-m", "webgateway.cli", "api", "--config", str(conf)]
        with launched(cmd, root / "api.log", Path.cwd()) as proc:
            t0 = time.monotonic()
            while not healthy(f"http://127.0.0.1:{port}/healthz"):
                if time.monotonic() - t0 > 60 or proc.poll() is not None:
                    raise RuntimeError((root / "api.log").read_text())
                time.sleep(0.05)
            token = post_owner(port, (root / "admin.token").read_text().strip())
            (root / "put.lua").write_text(LUA)
            api0 = cpu_s(proc.pid)
            pg0 = pg_server_cpu(postmaster) if postmaster else 0.0
            load = os.getloadavg()[0]
            wrk = subprocess.run(
                ["wrk", "-t", "2", "-c", str(conns), "-d", f"{seconds}s", "--latency",
                 "-s", str(root / "put.lua"), f"http://127.0.0.1:{port}", "--", token],
                capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
            api_cpu = cpu_s(proc.pid) - api0
            pg_cpu = pg_server_cpu(postmaster) - pg0 if postmaster else 0.0
    done = int(re.search(r"(\d+) requests in", wrk).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", wrk, re.M))
    pg_part = f", PostgreSQL {pg_cpu / done * 1e6:.0f} µs" if postmaster else ""
    return (f"{kind:<7} {rate:>8.0f} writes/s  {done} in {seconds} s, non-2xx"
            f" {bad.group(1) if bad else 0}, p50 {lat.get('50')} p99 {lat.get('99')};"
            f" CPU per write: API {api_cpu / done * 1e6:.0f} µs{pg_part} (load {load:.2f})")


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    for kind in sys.argv[3:] or ["sqlite", "pg"]:
        print(run(kind, seconds, conns), flush=True)


if __name__ == "__main__":
    main()
