"""``proxy.handoff`` on real sockets in one process: a worker's ``Sender`` and the main
process's ``Receiver`` joined by a real ``SOCK_SEQPACKET`` socketpair, real loopback TCP
clients handed over. What two processes add is covered by ``test_tunnel_workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from proxy import clienthello as ch
from proxy.engine import Engine, Limits
from proxy.handoff import Receiver, Sender, encode
from proxy.routes import RouteTable
from tests.integration.test_tunnel import _client_hello
from tests.support import ZONE

HELLO = _client_hello(f"hidden.{ZONE}")


def fds() -> int:
    """Descriptors open now; an earlier test's objects awaiting the collector (a socket
    held by a traceback's frame) are collected first, or they close during the count."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Main:
    """The main process's side: what it dispatched, closed at once."""

    engine: Engine
    got: list[tuple[tuple[str, int], ch.ClientHello, float]] = field(default_factory=list)

    def dispatch(self, sock: socket.socket, addr: tuple[str, int], hello: ch.ClientHello,
                 deadline: float) -> None:
        self.got.append((addr, hello, deadline))
        sock.close()
        self.engine.closed()


@dataclass
class Clients:
    """Loopback TCP clients that sent a ClientHello, and the server ends we accepted."""

    listener: socket.socket
    clients: list[socket.socket] = field(default_factory=list)

    def accept_one(self, payload: bytes = HELLO) -> tuple[socket.socket, tuple[str, int]]:
        c = socket.create_connection(self.listener.getsockname())
        c.sendall(payload)
        self.clients.append(c)
        conn, addr = self.listener.accept()
        conn.setblocking(False)
        return conn, addr

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.listener.close()


@contextlib.contextmanager
def clients() -> Iterator[Clients]:
    ls = socket.create_server(("127.0.0.1", 0), backlog=4096)
    cl = Clients(ls)
    try:
        yield cl
    finally:
        cl.close()


def engine() -> Engine:
    return Engine(RouteTable(ZONE), Limits(handshake_timeout=10.0), CollectorRegistry())


@contextlib.asynccontextmanager
async def pair() -> AsyncIterator[tuple[Sender, Receiver, Main, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker, main_engine = engine(), engine()
    main = Main(main_engine)
    sender = Sender(worker, theirs, CollectorRegistry())
    receiver = Receiver(main_engine, main.dispatch, CollectorRegistry())
    try:
        yield sender, receiver, main, ours
    finally:
        receiver.close()
        sender.close()
        ours.close()


async def test_a_full_channel_refuses_keeps_the_socket_and_is_drained_in_order(
        caplog: pytest.LogCaptureFixture) -> None:
    base = fds()
    loop = asyncio.get_running_loop()
    with clients() as cl:
        async with pair() as (sender, receiver, main, ours):
            worker = sender.engine
            sent: list[tuple[str, int]] = []
            refused = 0
            for _ in range(2000):  # bounded; the kernel's buffer fills long before
                sock, addr = cl.accept_one()
                assert worker.opened()
                if sender.send(sock, addr, loop.time() - 0.5):
                    assert sock.fileno() == -1  # ours is closed: the main process has it
                    sent.append(addr)
                    continue
                refused += 1
                assert sock.fileno() >= 0  # still the caller's: served without tunnels
                sock.close()
                worker.closed()
                if refused == 3:
                    break
            assert 100 < len(sent) < 1000 and refused == 3  # CHANNEL_BUFFER: ~260
            assert worker.count == 0
            assert caplog.text.count("its queue is full") == 1  # once, not per client
            # the main process reads them all, in order, each with its own deadline
            receiver.attach(ours)
            for _ in range(100):
                if len(main.got) == len(sent):
                    break
                await asyncio.sleep(0.01)
            assert [a for a, _, _ in main.got] == sent
            assert all(h.server_name == f"hidden.{ZONE}" for _, h, _ in main.got)
            # accepted 0.5 s before the send: the deadline runs from the first accept
            now = loop.time()
            assert all(now + 9.0 < d < now + 9.55 for _, _, d in main.got)
            assert main.engine.count == 0
            assert sender.send(*cl.accept_one(), loop.time())  # room again
    assert fds() == base


async def test_the_main_process_gone_the_worker_says_so_and_keeps_the_client(
        caplog: pytest.LogCaptureFixture) -> None:
    base = fds()
    with clients() as cl:
        async with pair() as (sender, _, _, ours):
            ours.close()
            sock, addr = cl.accept_one()
            with caplog.at_level(logging.WARNING):
                assert not sender.send(sock, addr, asyncio.get_running_loop().time())
            assert sock.fileno() >= 0
            sock.close()
            assert "the main process is gone" in caplog.text
    assert fds() == base


async def test_hostile_channel_messages_are_dropped_and_their_descriptors_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    base = fds()
    with clients() as cl:
        async with pair() as (sender, receiver, main, ours):
            receiver.attach(ours)
            theirs = sender.channel
            a, _ = cl.accept_one()
            b, _ = cl.accept_one()
            good = encode(("127.0.0.1", 9), 0.0)
            theirs.send(good)  # no descriptor
            socket.send_fds(theirs, [good], [a.fileno(), b.fileno()])  # two
            socket.send_fds(theirs, [b"\x00" * 3], [a.fileno()])  # too short
            socket.send_fds(theirs, [struct.pack("!dH", 0, 9) + b"\xff" * 4], [a.fileno()])
            socket.send_fds(theirs, [good + b"x" * 200], [a.fileno()])  # too long: truncated
            a.close()
            b.close()
            c, addr = cl.accept_one()
            assert sender.send(c, addr, asyncio.get_running_loop().time())  # still served
            for _ in range(100):
                if main.got:
                    break
                await asyncio.sleep(0.01)
            assert [g[0] for g in main.got] == [addr]
            assert "handed over by a worker was lost" in caplog.text
            # the worker exits: its end closes, ours is read to the end and closed
            theirs.close()
            for _ in range(100):
                if not receiver.channels:
                    break
                await asyncio.sleep(0.01)
            assert not receiver.channels
    assert fds() == base


async def test_no_whole_hello_in_the_main_process_is_closed_and_counted() -> None:
    """A worker hands over only a whole hello; should the main process not find one (a
    half hello and a FIN here), it closes the socket and counts the connection failed."""
    base = fds()
    with clients() as cl:
        async with pair() as (sender, receiver, main, ours):
            sock, addr = cl.accept_one(HELLO[:40])
            cl.clients[-1].shutdown(socket.SHUT_WR)
            assert sender.send(sock, addr, asyncio.get_running_loop().time())
            receiver.attach(ours)
            outcomes = main.engine.metrics.outcomes
            for _ in range(100):
                if outcomes.get("handshake_failed"):
                    break
                await asyncio.sleep(0.01)
            assert not main.got and outcomes.get("handshake_failed") == 1
            for _ in range(300):  # closed gently: read until the client's FIN (here now)
                if main.engine.count == 0:
                    break
                await asyncio.sleep(0.01)
            assert main.engine.count == 0
    assert fds() == base
