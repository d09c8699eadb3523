"""Plumbing for the proxy's integration tests: a test CA, tiny backends, a live proxy."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry

from proxy.engine import Engine
from proxy.service import ProxyService
from tests.support import ZONE, cert_row, make_config
from webgateway.addresses import parse_hostport
from webgateway.config import Config, ConfigError
from webgateway.model import Certificate, Name, TlsMode
from webgateway.sqlite_store import SqliteStore


class Backend(asyncio.Protocol):
    """A minimal HTTP/1.1 backend: answers every request with its own tag and the path.

    ``/big/N`` answers N bytes; the first bytes of each connection are recorded so a
    test can see a PROXY header or a passthrough ClientHello.
    """

    def __init__(self, server: BackendServer) -> None:
        self.server = server
        self.buf = b""
        self.first = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        if not self.first:
            self.first = data[:4096]
            self.server.firsts.append(self.first)
        if self.server.raw:
            return
        self.buf += data
        if self.buf.startswith(b"\r\n\r\n\x00\r\nQUIT\n"):
            n = 16 + int.from_bytes(self.buf[14:16], "big")
            self.buf = self.buf[n:]
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if path.startswith("/big/"):
                body = b"x" * int(path[5:])
            else:
                body = f"{self.server.tag} {path}\n".encode()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            if b"connection: close" in head.lower():
                self.transport.close()
                return


@dataclass
class BackendServer:
    tag: str
    host: str
    raw: bool = False
    connections: int = 0
    firsts: list[bytes] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Backend(self), self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Gateway:
    tmp: Path
    store: SqliteStore
    proxy: ProxyService
    ca: trustme.CA
    ca_file: Path
    https_port: int
    http_port: int
    registry: CollectorRegistry

    async def name(self, label: str, *backends: str, **kw: Any) -> None:
        await self.store.put_name(
            Name(label, 1, tuple(parse_hostport(b) for b in backends), **kw), 1000
        )
        await self.synced()

    async def synced(self) -> None:
        target = await self.store.serial()
        for _ in range(200):
            if self.proxy.follower.serial >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("proxy did not follow the store")

    async def certificate(self, cert_id: str, *domains: str) -> Certificate:
        """What certd stores: the chain and the key in the certificate's row."""
        cert = cert_row(cert_id, domains, self.ca.issue_cert(*domains))
        await self.store.put_certificate(cert)
        await self.synced()
        return cert


@contextlib.asynccontextmanager
async def gateway(tmp: Path, api: dict[str, Any] | None = None,
                  **proxy_cfg: Any) -> AsyncIterator[Gateway]:
    cfg = make_config(tmp, proxy=proxy_cfg, api=api or {})
    store = SqliteStore(cfg.store.path, 0.01)
    await store.open()
    await store.create_owner("alice", "hash-alice")
    registry = CollectorRegistry()
    svc = ProxyService(cfg, store, registry)
    await svc.start()
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    gw = Gateway(tmp, store, svc, ca, ca_file, svc.https_addresses[0][1],
                 svc.http_addresses[0][1], registry)
    try:
        yield gw
    finally:
        await svc.stop()
        await store.close()


async def refused_at_start(cfg: Config) -> ConfigError:
    """The ``ConfigError`` a proxy with ``cfg`` stops its start-up with."""
    store = SqliteStore(cfg.store.path)
    await store.open()
    try:
        with pytest.raises(ConfigError) as err:
            await ProxyService(cfg, store, CollectorRegistry()).start()
        return err.value
    finally:
        await store.close()


@contextlib.contextmanager
def cycles_kept() -> Iterator[Callable[[set[str]], list[str]]]:
    """Inside, a collection keeps what it finds unreachable (only reference cycles are);
    yields ``left(types)``: which of those type names a collection now finds in cycles."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def left(types: set[str]) -> list[str]:
        gc.collect()
        return sorted({type(o).__name__ for o in gc.garbage} & types)

    try:
        yield left
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def run(*cmd: str, stdin: bytes = b"", timeout: float = 30) -> tuple[int, bytes, bytes]:
    """Run a real client (curl, openssl) without blocking the loop the proxy runs on."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "LC_ALL": "C"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


def fqdn(label: str) -> str:
    return f"{label}.{ZONE}"


async def curl(gw: Gateway, host: str, path: str = "/", *extra: str) -> tuple[int, bytes, bytes]:
    return await run(
        "curl", "-sS", "--max-time", "20", "--cacert", str(gw.ca_file),
        "--resolve", f"{host}:{gw.https_port}:127.0.0.1",
        *extra, f"https://{host}:{gw.https_port}{path}",
    )


__all__ = ["Backend", "BackendServer", "Gateway", "TlsMode", "curl", "cycles_kept", "fqdn",
           "gateway", "refused_at_start", "run"]


#: What upload tests send: 64 KiB that are not all one byte.
UPLOAD_BLOCK = hashlib.sha256(b"upload").digest() * 2048


async def upload(w: asyncio.StreamWriter, size: int) -> str:
    """Send ``size`` bytes of ``UPLOAD_BLOCK`` (drained block by block); their sha256."""
    digest = hashlib.sha256()
    for _ in range(size // len(UPLOAD_BLOCK)):
        w.write(UPLOAD_BLOCK)
        digest.update(UPLOAD_BLOCK)
        await w.drain()
    return digest.hexdigest()


async def receive(sock: socket.socket, size: int) -> tuple[int, str]:
    """Read ``size`` bytes from a backend's socket: how many came, and their sha256."""
    loop = asyncio.get_running_loop()
    digest, n = hashlib.sha256(), 0
    while n < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 30)
        assert chunk
        digest.update(chunk)
        n += len(chunk)
    return n, digest.hexdigest()


async def client_unread(engine: Engine, settle: float, size: int) -> int:
    """With a backend that reads nothing: after ``settle`` s, the one open pair reads no
    more of its client's ``size``-byte upload for 0.5 s; the bytes the proxy holds for it."""
    await asyncio.sleep(settle)
    pair = next(iter(engine.splices))
    from_client = pair.carried()[0]
    await asyncio.sleep(0.5)
    assert pair.carried()[0] == from_client < size  # the client is not read
    return pair.held()
