"""Why the tunnel is a pool of connections and not one multiplexed session: two figures.

1. Gateway RSS per idle TLS connection (uvloop server, the client in another process):
   the price of each pooled connection a node keeps open.
2. CPU per MiB of a TLS pipe on loopback (both ends in this process), and what a framed
   multiplexer with per-stream windows adds on top of it (sans-IO framing and window
   accounting on both ends, 16 KiB frames): the price a session would pay on every byte.

usage: .venv/bin/python bench/tunnel/transport_choice.py [IDLE_CONNECTIONS=1000] [MIB=256]
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import struct
import sys
import time

import trustme
import uvloop

CHUNK = b"x" * 65536


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("gw.test").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def idle_rss(n: int) -> None:
    sctx, cctx = contexts()
    conns: list[asyncio.BaseTransport] = []

    class Idle(asyncio.Protocol):
        def connection_made(self, t: asyncio.BaseTransport) -> None:
            conns.append(t)

    srv = await asyncio.get_running_loop().create_server(Idle, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    await asyncio.sleep(0.2)
    base = rss_kib()
    pid = os.fork()
    if pid == 0:  # the clients live in another process, so only the server side is counted
        async def clients() -> None:
            held = [await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                  server_hostname="gw.test") for _ in range(n)]
            await asyncio.sleep(60)
            del held
        uvloop.run(clients())
        os._exit(0)
    try:
        for _ in range(1200):
            if len(conns) >= n:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        grew = rss_kib() - base
        print(f"{n} idle TLS connections: gateway RSS +{grew / 1024:.1f} MiB,"
              f" {grew / n:.1f} KiB each")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        srv.close()


async def tls_pipe(total: int) -> float:
    sctx, cctx = contexts()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    got = 0

    class Sink(asyncio.Protocol):
        def data_received(self, d: bytes) -> None:
            nonlocal got
            got += len(d)
            if got >= total and not done.done():
                done.set_result(None)

    srv = await loop.create_server(Sink, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="gw.test")
    t0, c0 = time.perf_counter(), time.process_time()
    sent = 0
    while sent < total:
        w.write(CHUNK)
        sent += len(CHUNK)
        await w.drain()
    await done
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    w.close()
    srv.close()
    ms = dc * 1000 / (total >> 20)
    print(f"TLS pipe, both ends: {total / dt / 2**20:.0f} MiB/s, {ms:.2f} ms CPU per MiB")
    return ms


def mux_framing(total: int) -> float:
    header = struct.Struct("!BIH")
    buf = bytearray()
    window = 4 << 20
    c0 = time.process_time()
    sent = 0
    while sent < total:
        mv = memoryview(CHUNK)
        for i in range(0, len(CHUNK), 16384):  # sender: frames, window charged
            part = mv[i : i + 16384]
            window -= len(part)
            buf += header.pack(0, 1, len(part))
            buf += part
        sent += len(CHUNK)
        pos = 0
        while len(buf) - pos >= header.size:  # receiver: parse, deliver, credit back
            _, _, n = header.unpack_from(buf, pos)
            bytes(buf[pos + header.size : pos + header.size + n])
            pos += header.size + n
        del buf[:pos]
        window += len(CHUNK)
    ms = (time.process_time() - c0) * 1000 / (total >> 20)
    print(f"multiplexer framing, both ends: +{ms:.2f} ms CPU per MiB")
    return ms


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    uvloop.run(idle_rss(n))
    tls = uvloop.run(tls_pipe(mib << 20))
    mux = mux_framing(mib << 20)
    print(f"a multiplexed session would add {100 * mux / tls:.0f} % CPU per byte")


if __name__ == "__main__":
    main()
