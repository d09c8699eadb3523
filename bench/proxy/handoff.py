"""What handing one connection from a proxy worker to the main process costs (``proxy.handoff``).

Two processes, as with ``[proxy] workers = 2``: this one plays the worker (real loopback
TCP clients send a real ClientHello; it accepts, peeks and parses each as the listener
does, then ``Sender.send``), a spawned one plays the main process (``Receiver`` on the
other end of the ``SOCK_SEQPACKET`` socketpair: ``recvmsg``, adopt, peek and parse again,
dispatch, which here keeps the socket, closed after the count). Hand-offs are paced (one per
PACE ms) so every one wakes the receiver as a lone connection would: no batching flatters
the figures.

Printed side by side, per connection: the worker's CPU in ``send`` and the main process's
CPU per hand-off received (``getrusage``, its whole loop included), against the CPU of what
every process does with every connection anyway (accept, peek, parse); and the latency
from the worker's ``send`` to the main process's dispatch, p50/p99.

usage: python bench/proxy/handoff.py [N=2000] [PACE_MS=1]
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import socket
import ssl
import statistics
import sys
import time
from multiprocessing.connection import Connection

from prometheus_client import CollectorRegistry

from proxy import clienthello as ch
from proxy.engine import Engine, Limits
from proxy.handoff import Receiver, Sender
from proxy.routes import RouteTable

ZONE = "gw.test"


def client_hello(server_name: str) -> bytes:
    """A real TLS client's first flight (as ``tests/integration/test_tunnel.py`` makes it)."""
    obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                                server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def main_process(channel: socket.socket, report: Connection, n: int) -> None:
    """The receiving side: counts CPU from the first hand-off to the ``n``-th."""
    async def run() -> None:
        engine = Engine(RouteTable(ZONE), Limits(), CollectorRegistry())
        latencies: list[float] = []
        kept: list[socket.socket] = []  # closed after the count: a close is not a hand-off
        done = asyncio.Event()
        t0 = [0.0]

        def dispatch(sock: socket.socket, addr: tuple[str, int], h: ch.ClientHello,
                     deadline: float) -> None:
            if not latencies:
                t0[0] = cpu()
            latencies.append(time.monotonic())
            kept.append(sock)
            if len(latencies) == n:
                done.set()

        receiver = Receiver(engine, dispatch, CollectorRegistry())
        receiver.attach(channel)
        report.send("ready")
        await done.wait()
        spent = cpu() - t0[0]
        report.send((spent, latencies))
        receiver.close()
        for sock in kept:
            sock.close()

    loop = new_loop()
    loop.run_until_complete(run())
    loop.close()


async def worker(n: int, pace: float) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=main_process, args=(theirs, child, n))
    proc.start()
    theirs.close()
    assert parent.recv() == "ready"
    engine = Engine(RouteTable(ZONE), Limits(), CollectorRegistry())
    sender = Sender(engine, ours, CollectorRegistry())
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    payload = client_hello(f"hidden.{ZONE}")
    sends: list[float] = []
    clients: list[socket.socket] = []  # closed at the end, outside every count
    accept_cpu = send_cpu = 0.0
    for _ in range(n):
        client = socket.create_connection(listener.getsockname())
        client.sendall(payload)
        await asyncio.sleep(0.0005)  # the hello is in the server's buffer (loopback)
        c0 = time.process_time()
        conn, addr = listener.accept()
        conn.setblocking(False)
        assert engine.opened()
        h = ch.parse(conn.recv(ch.MAX_PEEK, socket.MSG_PEEK))
        assert isinstance(h, ch.ClientHello)
        c1 = time.process_time()
        sends.append(time.monotonic())
        assert sender.send(conn, addr, loop.time())
        c2 = time.process_time()
        accept_cpu += c1 - c0
        send_cpu += c2 - c1
        clients.append(client)
        await asyncio.sleep(pace)
    spent, arrived = parent.recv()
    proc.join(10)
    for client in clients:
        client.close()
    listener.close()
    sender.close()
    lat = sorted((a - s) * 1e6 for s, a in zip(sends, arrived, strict=True))
    load = os.getloadavg()[0]
    print(f"# {n} hand-offs, one per {pace * 1e3:.1f} ms; 2 processes, load average {load:.2f}")
    print(f"{'what (per connection)':<48} {'µs':>8}")
    print(f"{'accept + peek + parse (every connection, peer)':<48} {accept_cpu / n * 1e6:8.1f}")
    print(f"{'worker: Sender.send (sendmsg + close)':<48} {send_cpu / n * 1e6:8.1f}")
    print(f"{'main: receive, adopt, peek, parse (its loop)':<48} {spent / (n - 1) * 1e6:8.1f}")
    print(f"{'latency send -> dispatch p50':<48} {statistics.median(lat):8.1f}")
    print(f"{'latency send -> dispatch p99':<48} {lat[int(len(lat) * 0.99) - 1]:8.1f}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    pace = float(sys.argv[2]) / 1e3 if len(sys.argv) > 2 else 0.001
    asyncio.run(worker(n, pace))
