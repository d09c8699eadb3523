"""The HTTPS listener: peek at the ClientHello, then terminate or pass the bytes through.

The hello is read with ``MSG_PEEK`` so it stays in the kernel's receive buffer: for a
passthrough route the backend later receives it untouched, and for a terminated route
the event loop's own (C-level in uvloop) TLS implementation starts the handshake from
byte zero with the context chosen by SNI. No bytes are re-injected, and the common
case costs one extra ``recv`` per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from typing import Final

from proxy import clienthello as ch
from proxy.engine import Engine
from proxy.routes import Route
from webgateway.addresses import HostPort

log = logging.getLogger(__name__)

ACCEPT_BATCH: Final = 64
_BAD_GATEWAY_BODY: Final = (
    b"<html><body><h1>502 Bad Gateway</h1><p>No backend is reachable.</p></body></html>\n"
)
BAD_GATEWAY: Final = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_BAD_GATEWAY_BODY)
) + _BAD_GATEWAY_BODY


def bind(addr: HostPort, reuse_port: bool = False, backlog: int = 4096,
         defer_accept: int = 0) -> socket.socket:
    family = socket.AF_INET6 if addr.host.version == 6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((str(addr.host), addr.port))
        if defer_accept:
            # Wake us only once the client has sent something (its ClientHello), which
            # saves a readiness round per connection and keeps silent sockets in the kernel.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
        s.listen(backlog)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


class _Lingering:
    """Close a socket without a reset: read and drop until the peer closes (bounded)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, engine: Engine,
                 seconds: float = 2.0) -> None:
        self.loop, self.sock, self.engine = loop, sock, engine
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self._read)
        self.timer = loop.call_later(seconds, self._close)
        self.budget = 64 * 1024
        engine.loose[self] = self._close

    def _read(self) -> None:
        try:
            data = self.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.budget -= len(data)
        if not data or self.budget <= 0:
            self._close()

    def _close(self) -> None:
        if self.fd < 0:
            return
        self.engine.loose.pop(self, None)
        self.loop.remove_reader(self.fd)
        self.timer.cancel()
        self.fd = -1
        self.sock.close()
        self.engine.closed()


def close_gently(loop: asyncio.AbstractEventLoop, sock: socket.socket, engine: Engine,
                 payload: bytes = b"") -> None:
    """Send ``payload`` (an alert), half-close, drain, close; counts the connection closed."""
    try:
        if payload:
            sock.send(payload)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        engine.closed()
        return
    _Lingering(loop, sock, engine)


def _bytes_wanted(data: bytes) -> int:
    """How many bytes to wait for: the end of the first record, else one more than now."""
    if len(data) < 5:
        return 5
    end = 5 + ((data[3] << 8) | data[4])
    return min(end if len(data) < end else len(data) + 1, ch.MAX_PEEK)


class _Peek:
    """One accepted socket until its ClientHello is readable in full."""

    __slots__ = ("addr", "deadline", "delay", "engine", "fd", "last", "listener", "loop",
                 "lowat", "reading", "sock", "timer")

    def __init__(self, listener: HttpsListener, sock: socket.socket, addr: tuple[str, int]) -> None:
        self.listener = listener
        self.engine = listener.engine
        self.loop = listener.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.deadline = self.loop.time() + self.engine.limits.handshake_timeout
        self.timer: asyncio.TimerHandle | None = self.loop.call_at(self.deadline, self._timeout)
        self.reading = False
        self.delay = 0.002
        self.last = 0
        self.lowat = 1
        self.engine.loose[self] = self._timeout

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

    def _timeout(self) -> None:
        if self.timer is None:
            return
        self.timer.cancel()
        self.timer = None
        self._stop_waiting()
        self.engine.outcome("timeout")
        with contextlib.suppress(OSError):
            self.sock.recv(ch.MAX_PEEK)  # unread bytes would turn our FIN into a reset
        self.sock.close()
        self.engine.closed()

    def _reject(self, outcome: str, desc: int | None, consume: int) -> None:
        self._stop_waiting()
        self.engine.outcome(outcome)
        try:
            if consume:
                self.sock.recv(consume)
        except OSError:
            pass
        close_gently(self.loop, self.sock, self.engine,
                     ch.alert(desc) if desc is not None else b"")

    def try_peek(self) -> None:
        if self.timer is None:
            return  # timed out meanwhile
        try:
            data = self.sock.recv(ch.MAX_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            if not self.reading:
                self.reading = True
                self.loop.add_reader(self.fd, self.try_peek)
            return
        except OSError:
            self._stop_waiting()
            self.sock.close()
            self.engine.closed()
            return
        if not data:
            self._stop_waiting()
            self.sock.close()
            self.engine.closed()
            return
        try:
            hello = ch.parse(data)
        except ch.ClientHelloError as e:
            log.debug("bad ClientHello from %s: %s", self.addr[0], e)
            self._reject("bad_hello", ch.ALERT_DECODE_ERROR if data[0] == 22 else None, len(data))
            return
        if isinstance(hello, ch.ClientHello):
            self._stop_waiting()
            self.listener.dispatch(self.sock, self.addr, hello, self.deadline)
            return
        # Incomplete (a hello split over TCP segments). Ask the kernel to report the socket
        # readable only once the rest is there (SO_RCVLOWAT); where that is not honoured,
        # readiness repeats with nothing new, and we fall back to polling with back-off.
        progressed = len(data) != self.last
        self.last = len(data)
        if not progressed and _peer_closed(self.sock):
            # A peek never shows EOF behind unread bytes: ask TCP whether the client left.
            self._stop_waiting()
            self.engine.outcome("bad_hello")
            with contextlib.suppress(OSError):
                self.sock.recv(ch.MAX_PEEK)
            self.sock.close()
            self.engine.closed()
            return
        if progressed and self._set_lowat(_bytes_wanted(data)):
            if not self.reading:
                self.reading = True
                self.loop.add_reader(self.fd, self.try_peek)
            return
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        self.delay = 0.002 if progressed else min(self.delay * 2, 0.25)
        self.loop.call_later(self.delay, self.try_peek)

    def _set_lowat(self, n: int) -> bool:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:
            return False
        self.lowat = n
        return True


_TCP_CLOSE_WAIT: Final = 8  # tcpi_state, include/net/tcp_states.h


def _peer_closed(sock: socket.socket) -> bool:
    """True once the peer has sent its FIN (Linux TCP_INFO; False where unknown)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, AttributeError):
        return False
    return bool(info) and info[0] == _TCP_CLOSE_WAIT


class HttpsListener:
    def __init__(self, engine: Engine, sock: socket.socket) -> None:
        self.engine = engine
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, self._accept)
        self._paused: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
        else:
            self.loop.remove_reader(self.fd)
        self.sock.close()

    def _resume_accept(self) -> None:
        self._paused = None
        self.loop.add_reader(self.fd, self._accept)

    def _accept(self) -> None:
        engine = self.engine
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept paused for 1 s: %s", e)
                    self.loop.remove_reader(self.fd)
                    self._paused = self.loop.call_later(1.0, self._resume_accept)
                return
            if not engine.opened():
                with contextlib.suppress(OSError):
                    conn.recv(ch.MAX_PEEK, socket.MSG_DONTWAIT)  # unread bytes => RST
                conn.close()
                continue
            conn.setblocking(False)  # the event loop sets TCP_NODELAY when it adopts it
            _Peek(self, conn, addr).try_peek()

    def dispatch(self, sock: socket.socket, addr: tuple[str, int], hello: ch.ClientHello,
                 deadline: float) -> None:
        engine = self.engine
        route = engine.table.route(hello.server_name) if hello.server_name else None
        if route is None:
            log.debug("unknown server name %r from %s", hello.server_name, addr[0])
            self._alert(sock, "unknown_name", hello)
            return
        if route.passthrough:
            engine.spawn(self._passthrough(sock, addr, route))
            return
        ctx = engine.table.certs.context_for(route.host, route.name.http2)
        if ctx is None:
            log.debug("no certificate yet for %s", route.host)
            self._alert(sock, "no_certificate", hello)
            return
        engine.spawn(self._terminate(sock, addr, route, ctx, deadline))

    def _alert(self, sock: socket.socket, outcome: str, hello: ch.ClientHello) -> None:
        self.engine.outcome(outcome)
        with contextlib.suppress(OSError):
            sock.recv(hello.length)
        close_gently(self.loop, sock, self.engine, ch.alert(ch.ALERT_UNRECOGNIZED_NAME))

    async def _passthrough(self, sock: socket.socket, addr: tuple[str, int], route: Route) -> None:
        engine = self.engine
        sp = engine.new_splice()
        try:
            local = sock.getsockname()
            ok = await engine.connect_backend(route, sp, addr, local)
        except BaseException:
            sock.close()
            sp.finish()
            raise
        if not ok:
            engine.outcome("no_backend")
            engine.forget(sp)
            close_gently(self.loop, sock, engine)
            return
        try:
            await self.loop.connect_accepted_socket(lambda: sp.client, sock)
        except OSError:
            sock.close()
            sp.backend.close()
            sp.finish()
            return
        engine.outcome("passthrough")
        sp.link()

    async def _terminate(self, sock: socket.socket, addr: tuple[str, int], route: Route,
                         ctx: ssl.SSLContext, deadline: float) -> None:
        engine = self.engine
        sp = engine.new_splice()
        sp.client.half_close = False
        left = max(0.1, deadline - self.loop.time())
        try:
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: sp.client, sock, ssl=ctx, ssl_handshake_timeout=left
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.debug("TLS handshake with %s failed: %s", addr[0], e)
            engine.outcome("handshake_failed")
            sock.close()
            sp.finish()
            return
        try:
            local = transport.get_extra_info("sockname")
            ok = await engine.connect_backend(route, sp, addr, local)
        except BaseException:
            transport.abort()
            raise
        if not ok:
            engine.outcome("no_backend")
            if not transport.is_closing():
                ssl_object = transport.get_extra_info("ssl_object")
                if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                    transport.write(BAD_GATEWAY)  # an HTTP/1 page; h2 clients just see a close
                transport.close()
            return
        engine.outcome("terminated")
        sp.link()
