"""Handing a client connection from a proxy worker process to the main one, socket and all.

Reverse tunnels live in one process, the main one: a name's node connections cannot be
shared between processes, and a browser for that name must reach the process holding
them. ``SO_REUSEPORT`` spreads connections over the processes blindly, so a worker that
accepts a node's data connection (the tunnel ALPN) or a browser for a tunnel name sends
the socket to the main process over its channel (``SCM_RIGHTS`` on a ``SOCK_SEQPACKET``
socketpair, one per worker, made by ``webgateway.workerpool``). The ClientHello was only
peeked, so the socket is as the kernel accepted it, and the main process dispatches it
as if it had accepted it itself: its limits, its access log, its metrics, its tunnels.
Each message carries the client's address and when it was accepted (``CLOCK_MONOTONIC``,
one clock for every process), so the handshake deadline still runs from the first accept.

Bounded: what waits in a channel is bounded by the worker's send buffer, set to
``CHANNEL_BUFFER`` (Linux doubles it; about 260 hand-offs, each ~770 bytes of kernel
memory, whatever ``net.core.wmem_default`` says). When it is full, or the main process
is gone, the worker keeps the client: a browser is served without tunnels (the name's
ordinary backends, else the 502 page or, passed through, a clean close), a node gets a
TLS alert and dials again. Either is logged, at most once per ``LOG_EVERY`` seconds
with a count.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from proxy import clienthello as ch
from proxy.engine import Engine
from proxy.https import admitted
from proxy.lingering import close_gently
from proxy.peek import complete_hello

log = logging.getLogger(__name__)

#: Seconds between two log lines about failed hand-offs (the count says how many).
LOG_EVERY: Final = 10.0
#: The worker's send buffer on its channel: what bounds the hand-offs waiting there.
CHANNEL_BUFFER: Final = 100 * 1024
#: Messages read per wake-up of a channel, so one busy worker cannot starve the loop.
BATCH: Final = 64
_HEAD: Final = struct.Struct("!dH")  # accepted at (CLOCK_MONOTONIC), client port
_MAX_MESSAGE: Final = _HEAD.size + 64  # the longest IPv6 text with a zone fits
_FD_SPACE: Final = socket.CMSG_SPACE(4 * array.array("i").itemsize)

#: What the main process does with a complete ClientHello (``Dispatcher.dispatch``).
Dispatch = Callable[[socket.socket, tuple[str, int], ch.ClientHello, float], None]


class HandoffError(ValueError):
    """A channel message that is not a hand-off (never sent by our workers)."""


def encode(addr: tuple[str, int], accepted: float) -> bytes:
    """The data part of one hand-off: when (``time.monotonic``) and from where."""
    host = addr[0].encode()
    if len(host) > _MAX_MESSAGE - _HEAD.size:
        raise HandoffError(f"client address {addr[0]!r} is too long")
    return _HEAD.pack(accepted, addr[1]) + host


def decode(data: bytes) -> tuple[tuple[str, int], float]:
    """``encode``'s inverse: ((host, port), accepted)."""
    if not _HEAD.size < len(data) <= _MAX_MESSAGE:
        raise HandoffError(f"a hand-off of {len(data)} bytes")
    accepted, port = _HEAD.unpack_from(data)
    try:
        host = data[_HEAD.size:].decode("ascii")
    except UnicodeDecodeError as e:
        raise HandoffError("the client address is not ASCII") from e
    return (host, port), accepted


def _counter(registry: CollectorRegistry) -> Counter:
    return Counter("webgateway_proxy_handoffs",
                   "Connections a worker process handed to the main one (tunnel traffic), "
                   "by result: sent, failed (in workers), received (in the main process)",
                   ["result"], registry=registry)


class _Throttled:
    """A warning at most once per ``LOG_EVERY`` seconds, with how many it stands for."""

    def __init__(self) -> None:
        self.at = -LOG_EVERY
        self.unsaid = 0

    def warn(self, text: str) -> None:
        self.unsaid += 1
        now = time.monotonic()
        if now - self.at >= LOG_EVERY:
            log.warning("%s (%d in the last %.0f s)", text, self.unsaid, LOG_EVERY)
            self.at, self.unsaid = now, 0


class Sender:
    """A worker's end of its channel: ``send`` hands one accepted socket over."""

    def __init__(self, engine: Engine, channel: socket.socket,
                 registry: CollectorRegistry) -> None:
        channel.setblocking(False)
        channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER)
        self.engine = engine
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        counter = _counter(registry)
        self.sent, self.failed = counter.labels("sent"), counter.labels("failed")
        self.warning = _Throttled()

    def send(self, sock: socket.socket, addr: tuple[str, int], started: float) -> bool:
        """Give ``sock`` (accepted at loop time ``started``) to the main process.

        True: sent, our descriptor closed and the connection no longer counted here.
        False: it could not be sent (logged); the socket is still the caller's.
        """
        accepted = time.monotonic() - (self.loop.time() - started)
        try:
            socket.send_fds(self.channel, [encode(addr, accepted)], [sock.fileno()],
                            socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (OSError, HandoffError) as e:
            self.failed.inc()
            self.warning.warn(f"could not hand a connection from {addr[0]} to the main"
                              f" process: {_why(e)}; served here without tunnels")
            return False
        self.sent.inc()
        sock.close()  # ours only: the main process holds the connection now
        self.engine.closed()
        return True

    def close(self) -> None:
        self.channel.close()


def _why(e: Exception) -> str:
    if isinstance(e, BlockingIOError):
        return "its queue is full (the main process is not keeping up)"
    if isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.ECONNRESET,
                                               errno.ECONNREFUSED, errno.ENOTCONN):
        return "the main process is gone"
    return str(e)


class Receiver:
    """The main process's ends of its workers' channels: adopt what they hand over."""

    def __init__(self, engine: Engine, dispatch: Dispatch, registry: CollectorRegistry) -> None:
        self.engine = engine
        self.dispatch = dispatch
        self.loop = asyncio.get_running_loop()
        self.received = _counter(registry).labels("received")
        self.channels: set[socket.socket] = set()
        self.warning = _Throttled()

    def attach(self, channel: socket.socket) -> None:
        """Read hand-offs from ``channel`` (owned from now on) until its worker is gone."""
        channel.setblocking(False)
        self.channels.add(channel)
        self.loop.add_reader(channel.fileno(), self._readable, channel)

    def _detach(self, channel: socket.socket) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self.loop.remove_reader(channel.fileno())
            channel.close()  # hand-offs still queued are closed by the kernel

    def close(self) -> None:
        for channel in list(self.channels):
            self._detach(channel)

    def _readable(self, channel: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                data, ancdata, flags, _ = channel.recvmsg(
                    _MAX_MESSAGE, _FD_SPACE, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("a worker's hand-off channel failed: %s", e)
                self._detach(channel)
                return
            fds = _fds(ancdata)
            if not data and not fds:
                self._detach(channel)  # the worker exited; everything it sent was read
                return
            self._one(data, fds, flags)

    def _one(self, data: bytes, fds: list[int], flags: int) -> None:
        try:
            if flags & socket.MSG_CTRUNC:  # the kernel closed what did not fit
                raise HandoffError("its descriptor did not fit (is this process out of them?)")
            addr, accepted = decode(data)
            if len(fds) != 1 or flags & socket.MSG_TRUNC:
                raise HandoffError(f"a hand-off of {len(fds)} descriptors")
        except HandoffError as e:
            self.warning.warn(f"a connection handed over by a worker was lost: {e}")
            for fd in fds:
                with contextlib.suppress(OSError):
                    socket.socket(fileno=fd).close()
            return
        self.received.inc()
        self.adopt(socket.socket(fileno=fds[0]), addr, accepted)

    def adopt(self, sock: socket.socket, addr: tuple[str, int], accepted: float) -> None:
        """What the HTTPS listener does with an accepted socket, a worker having accepted it."""
        engine, loop = self.engine, self.loop
        sock.setblocking(False)
        started = loop.time() - max(0.0, time.monotonic() - accepted)
        if not admitted(engine, sock, addr, started):
            return
        hello = complete_hello(sock)
        if hello is None:  # complete in the worker: the client left
            engine.finish("handshake_failed", addr, started, reason="client_closed")
            close_gently(loop, sock, engine)
            return
        self.dispatch(sock, addr, hello, started + engine.limits.handshake_timeout)


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)
