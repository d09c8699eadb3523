"""Idle, slowloris and garbage clients against ``webgateway proxy`` run as a subprocess.

Shared by tests/soak/test_proxy_attack.py and bench/attack/proxy_attack.py. The proxy is a real
process (its RSS and fds read from /proc); the backend and the test CA live in the
caller's event loop, from the proxy's own integration harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.gateway import write_config
from tests.integration.proxy_harness import BackendServer, run
from tests.procs import Proc, wait_tcp
from tests.soak.gauges import fd_count
from tests.support import ZONE, cert_row
from webgateway.addresses import parse_hostport
from webgateway.config import load_config
from webgateway.model import Name
from webgateway.sqlite_store import SqliteStore

HOST = f"app.{ZONE}"


@dataclass
class Proxy:
    proc: Proc
    port: int
    ca_file: Path
    backend: BackendServer

    async def curl(self) -> bool:
        """One real ``curl`` against the terminated name; True when the backend answered."""
        rc, out, _ = await run(
            "curl", "-sS", "--max-time", "15", "--cacert", str(self.ca_file),
            "--resolve", f"{HOST}:{self.port}:127.0.0.1", f"https://{HOST}:{self.port}/soak")
        return rc == 0 and out == b"app /soak\n"

    async def settled_fds(self, seconds: float = 3.0) -> int:
        """The fd count once it has not moved for half a second (bounded)."""
        last, still, end = fd_count(self.proc.pid), 0.0, time.monotonic() + seconds
        while time.monotonic() < end and still < 0.5:
            await asyncio.sleep(0.1)
            now = fd_count(self.proc.pid)
            still = still + 0.1 if now == last else 0.0
            last = now
        return last


async def _seed(cfg_path: Path, backend: str, tmp: Path) -> Path:
    cfg = load_config(cfg_path)
    cfg.store.path.parent.mkdir(parents=True, exist_ok=True)
    cfg.store.certs_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert(ZONE, f"*.{ZONE}")
    store = SqliteStore(cfg.store.path, 0.05)
    await store.open()
    try:
        owner = await store.create_owner("alice", "hash-alice")
        await store.put_name(Name("app", owner.id, (parse_hostport(backend),)), 1000)
        await store.put_certificate(cert_row("zone", (ZONE, f"*.{ZONE}"), leaf))
    finally:
        await store.close()
    return ca_file


@contextlib.asynccontextmanager
async def proxy(tmp: Path, **proxy_cfg: object) -> AsyncIterator[Proxy]:
    backend = BackendServer("app", "127.0.0.1")
    await backend.start()
    cfg = write_config(tmp, proxy=dict(proxy_cfg), log={"level": "warning"})
    ca_file = await _seed(cfg, backend.addr, tmp)
    port = load_config(cfg).proxy.https_listen[0].port
    proc = Proc("proxy", [sys.executable, "-m", "webgateway.cli", "proxy", "--config", str(cfg)],
                tmp / "proxy.log")
    try:
        await asyncio.to_thread(wait_tcp, "127.0.0.1", port, proc)
        p = Proxy(proc, port, ca_file, backend)
        for _ in range(50):  # the name and certificate are read at start; allow a poll
            if await p.curl():
                break
            await asyncio.sleep(0.2)
        yield p
    finally:
        proc.stop()
        await backend.close()


# ------------------------------------------------------------------ hostile clients

def open_idle(port: int, n: int) -> list[socket.socket]:
    """Connect and send nothing."""
    return [socket.create_connection(("127.0.0.1", port), 5) for _ in range(n)]


def open_slowloris(port: int, n: int, rnd: random.Random) -> list[socket.socket]:
    """Connect and send the first bytes of a TLS handshake record, then stall."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), 5)
        s.sendall(b"\x16\x03\x01\x02\x00\x01"[: rnd.randrange(1, 7)])
        out.append(s)
    return out


def drip(socks: list[socket.socket]) -> int:
    """One more byte of a ClientHello body on each stalled socket; returns how many took it."""
    n = 0
    for s in socks:
        with contextlib.suppress(OSError):
            s.send(b"\x00")
            n += 1
    return n


def garbage_hello(rnd: random.Random) -> bytes:
    kind = rnd.randrange(4)
    if kind == 0:  # not TLS at all
        return rnd.randbytes(rnd.randrange(5, 600))
    if kind == 1:  # a handshake record holding noise that is not a ClientHello
        body = bytes((rnd.choice((0, 2, 11, 20)),)) + rnd.randbytes(rnd.randrange(4, 500))
        return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    if kind == 2:  # a ClientHello whose inner lengths lie
        body = b"\x01\xff\xff\xff\x03\x03" + rnd.randbytes(32) + b"\xff" + rnd.randbytes(40)
        return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    return b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"  # plain HTTP on the TLS port


async def garbage_clients(port: int, n: int, rnd: random.Random, timeout: float) -> int:
    """``n`` connections each sending one garbage hello; returns how many the proxy closed."""

    async def one(payload: bytes) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        try:
            writer.write(payload)
            await writer.drain()
            await asyncio.wait_for(reader.read(), timeout)  # drain until the proxy's FIN
            return True
        except (OSError, TimeoutError):
            return isinstance(sys.exc_info()[1], ConnectionResetError)
        finally:
            writer.close()

    results = await asyncio.gather(*(one(garbage_hello(rnd)) for _ in range(n)))
    return sum(results)


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()
