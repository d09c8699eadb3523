"""Waiting for a client's ClientHello without taking it out of the kernel's buffer.

The hello is read with ``MSG_PEEK`` so it stays in the receive buffer: for a passthrough
route the backend later receives it untouched, and for a terminated route the event
loop's TLS starts the handshake from byte zero. A hello split over TCP segments is
waited for with ``SO_RCVLOWAT`` (woken only once the rest is there), or by polling
with back-off where the kernel does not honour it; the handshake timeout bounds it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Final

from proxy import clienthello as ch
from proxy.engine import Engine
from proxy.lingering import close_gently

log = logging.getLogger(__name__)

#: What gets a complete hello: (socket, client address, hello, handshake deadline).
Dispatch = Callable[[socket.socket, tuple[str, int], ch.ClientHello, float], None]

_TCP_CLOSE_WAIT: Final = 8  # tcpi_state, include/net/tcp_states.h


def bytes_wanted(data: bytes) -> int:
    """How many bytes to wait for: the end of the first record, else one more than now."""
    if len(data) < 5:
        return 5
    end = 5 + ((data[3] << 8) | data[4])
    return min(end if len(data) < end else len(data) + 1, ch.MAX_PEEK)


def peer_closed(sock: socket.socket) -> bool:
    """True once the peer has sent its FIN (Linux TCP_INFO; False where unknown)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, AttributeError):
        return False
    return bool(info) and info[0] == _TCP_CLOSE_WAIT


def peek_accepted(engine: Engine, dispatch: Dispatch, sock: socket.socket,
                  addr: tuple[str, int]) -> None:
    """Dispatch a just-accepted socket. With ``TCP_DEFER_ACCEPT`` its whole hello is almost
    always there already, so one peek and parse dispatch it with no waiting object and no
    timer; anything else (incomplete, not readable yet, malformed, closed) is left to a
    ``HelloPeek``, which peeks again and owns the waiting, the timeout and the errors."""
    hello = complete_hello(sock)
    if hello is not None:
        dispatch(sock, addr, hello,
                 asyncio.get_running_loop().time() + engine.limits.handshake_timeout)
    else:
        HelloPeek(engine, dispatch, sock, addr).try_peek()


def complete_hello(sock: socket.socket) -> ch.ClientHello | None:
    """The ClientHello waiting in ``sock`` (peeked, left there), if it is all there and
    well-formed; None for anything else, which the caller waits on or turns away."""
    try:
        hello = ch.parse(sock.recv(ch.MAX_PEEK, socket.MSG_PEEK))
    except (OSError, ch.ClientHelloError):
        return None
    return hello if isinstance(hello, ch.ClientHello) else None


class HelloPeek:
    """One accepted socket until its ClientHello is readable in full."""

    __slots__ = ("addr", "deadline", "delay", "dispatch", "engine", "fd", "last", "loop",
                 "lowat", "reading", "sock", "started", "timer")

    def __init__(self, engine: Engine, dispatch: Dispatch, sock: socket.socket,
                 addr: tuple[str, int]) -> None:
        self.engine = engine
        self.dispatch = dispatch
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.started = self.loop.time()
        self.deadline = self.started + engine.limits.handshake_timeout
        self.timer: asyncio.TimerHandle | None = self.loop.call_at(self.deadline, self._timeout)
        self.reading = False
        self.delay = 0.002
        self.last = 0
        self.lowat = 1
        engine.loose[self] = self._timeout

    def _stop_waiting(self) -> None:
        self.engine.loose.pop(self, None)
        if self.lowat > 1:
            self.lowat = 1
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _failed(self, reason: str) -> None:
        self.engine.finish("handshake_failed", self.addr, self.started, reason=reason)

    def _drop(self, reason: str) -> None:
        """Stop waiting and close at once (the client is gone, or out of time)."""
        self._stop_waiting()
        self._failed(reason)
        with contextlib.suppress(OSError):
            self.sock.recv(ch.MAX_PEEK)  # unread bytes would turn our FIN into a reset
        self.sock.close()
        self.engine.closed()

    def _timeout(self) -> None:
        if self.timer is not None:
            self._drop("timeout")

    def _reject(self, reason: str, desc: int | None, consume: int) -> None:
        self._stop_waiting()
        self._failed(reason)
        with contextlib.suppress(OSError):
            self.sock.recv(consume)
        close_gently(self.loop, self.sock, self.engine,
                     ch.alert(desc) if desc is not None else b"")

    def try_peek(self) -> None:
        if self.timer is None:
            return  # timed out meanwhile
        try:
            data = self.sock.recv(ch.MAX_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._read_when_ready()
            return
        except OSError:
            data = b""
        if not data:
            self._drop("client_closed")
            return
        try:
            hello = ch.parse(data)
        except ch.ClientHelloError as e:
            log.debug("bad ClientHello from %s: %s", self.addr[0], e)
            self._reject("bad_hello", ch.ALERT_DECODE_ERROR if data[0] == 22 else None, len(data))
            return
        if isinstance(hello, ch.ClientHello):
            self._stop_waiting()
            self.dispatch(self.sock, self.addr, hello, self.deadline)
            return
        # Incomplete (a hello split over TCP segments). Ask the kernel to report the socket
        # readable only once the rest is there (SO_RCVLOWAT); where that is not honoured,
        # readiness repeats with nothing new, and we fall back to polling with back-off.
        progressed = len(data) != self.last
        self.last = len(data)
        if not progressed and peer_closed(self.sock):
            # A peek never shows EOF behind unread bytes: ask TCP whether the client left.
            self._drop("client_closed")
            return
        if progressed and self._set_lowat(bytes_wanted(data)):
            self._read_when_ready()
            return
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        self.delay = 0.002 if progressed else min(self.delay * 2, 0.25)
        self.loop.call_later(self.delay, self.try_peek)

    def _read_when_ready(self) -> None:
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.fd, self.try_peek)

    def _set_lowat(self, n: int) -> bool:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:
            return False
        self.lowat = n
        return True
