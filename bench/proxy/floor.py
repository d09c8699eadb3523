"""The floor: the least CPU per new TLS connection that a proxy written in Python pays.

A TLS-terminating TCP proxy with nothing else: one level-triggered epoll in a plain loop,
OpenSSL on the socket (as ``proxy.tlssocket``), a non-blocking backend connect, one read
and one write per direction, close at the backend's EOF. No routes, limits, timeouts,
flow control, metrics or logs; it serves the bench's one certificate to anyone and is
not safe to expose. It is the peer ``python-floor`` of ``bench/proxy/run.sh``: set side
by side with nginx stream and the gateway, it splits the gateway's extra CPU into what
Python itself costs (here) and what the gateway's design adds on top (the rest).
Options: ``peek`` reads and parses the ClientHello first, as the gateway must to route
(``proxy.clienthello``); ``uv`` runs the epoll inside uvloop, as the gateway's is.
usage: floor.py PORT BACKEND_PORT CHAIN KEY [peek] [uv]
"""

from __future__ import annotations

import select
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from proxy import clienthello

IN = select.EPOLLIN | select.EPOLLRDHUP
OUT = select.EPOLLOUT


class Floor:
    def __init__(self, port: int, backend: int, chain: str, key: str, peek: bool) -> None:
        self.backend = ("127.0.0.1", backend)
        self.peek = peek
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(chain, key)
        self.ctx.num_tickets = 1  # as the gateway, and nginx with NumTickets 1 in the bench
        self.listener = ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)
        ls.bind(("127.0.0.1", port))
        ls.listen(4096)
        ls.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(ls.fileno(), select.EPOLLIN)
        self.handlers: dict[int, Callable[[int], None]] = {ls.fileno(): self.accept}
        self.buf = memoryview(bytearray(256 * 1024))

    def ready(self, timeout: float = -1) -> None:
        for fd, events in self.ep.poll(timeout):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler(events)

    def accept(self, events: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.peek:
            clienthello.parse(sock.recv(clienthello.MAX_PEEK, socket.MSG_PEEK))
        Pair(self, sock)


class Pair:
    __slots__ = ("b", "bfd", "c", "cfd", "floor", "pending", "tls")

    def __init__(self, floor: Floor, sock: socket.socket) -> None:
        self.floor, self.c, self.cfd = floor, sock, sock.fileno()
        self.tls = floor.ctx._wrap_socket(sock, True)  # type: ignore[attr-defined]
        self.b: socket.socket | None = None
        self.bfd = -1
        self.pending: list[bytes] | None = []
        self.handshake(0)

    def handshake(self, events: int) -> None:
        floor = self.floor
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            if not events:
                floor.ep.register(self.cfd, IN)
                floor.handlers[self.cfd] = self.handshake
            return
        except OSError:
            self.close()
            return
        b = self.b = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bfd = b.fileno()
        b.connect_ex(floor.backend)
        floor.ep.register(self.bfd, OUT | IN)
        floor.handlers[self.bfd] = self.from_backend
        floor.handlers[self.cfd] = self.from_client

    def from_backend(self, events: int) -> None:
        assert self.b is not None
        if events & OUT and self.pending is not None:
            self.floor.ep.modify(self.bfd, IN)
            for data in self.pending:
                self.b.send(data)
            self.pending = None
        if events & (IN | select.EPOLLHUP | select.EPOLLERR):
            try:
                n = self.b.recv_into(self.floor.buf)
            except BlockingIOError:
                return
            if n:
                self.tls.write(self.floor.buf[:n].tobytes())
                return
            try:  # noqa: SIM105  (as the gateway: contextlib.suppress costs three calls)
                self.tls.shutdown()
            except OSError:
                pass
            self.close()

    def from_client(self, events: int) -> None:
        try:
            n = self.tls.read(len(self.floor.buf), self.floor.buf)
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        except OSError:
            n = 0
        if not n:
            self.close()
            return
        data = self.floor.buf[:n].tobytes()
        if self.pending is not None:
            self.pending.append(data)
        elif self.b is not None:
            self.b.send(data)

    def close(self) -> None:
        for fd, sock in ((self.cfd, self.c), (self.bfd, self.b)):
            if fd >= 0 and sock is not None:
                self.floor.handlers.pop(fd, None)
                sock.close()
        self.cfd = self.bfd = -1


def main() -> None:
    port, backend, chain, key, *opts = sys.argv[1:]
    floor = Floor(int(port), int(backend), chain, key, "peek" in opts)
    if "uv" in opts:
        import asyncio

        import uvloop

        async def run() -> None:
            asyncio.get_running_loop().add_reader(floor.ep.fileno(), floor.ready, 0)
            await asyncio.Event().wait()

        uvloop.run(run())
    else:
        while True:
            floor.ready()


if __name__ == "__main__":
    main()
