"""A transport on a non-blocking socket, driven by edge-triggered readiness.

uvloop's transports read into buffers of their own and wrap each connection in protocol
and handle objects, and ``create_connection`` adds a coroutine, a future and an address
lookup per connect. Here each socket is registered once with the proxy's ``Readiness``
(one edge-triggered epoll, proxy/readiness.py) and this object reads and writes it
itself: plain TCP here, TLS with OpenSSL's socket BIO in ``TlsSocket``
(proxy/tlssocket.py), which overrides the three I/O primitives. That is what nginx does.

Edge-triggered: an event is not repeated, so a readable socket is read until it would
block (at most ``READS_PER_TURN`` reads per wake-up, then the loop's next turn), a paused
one remembers that it is readable, and a write that would block waits for the next
writable edge.

What the splice uses of an asyncio transport is here: ``write``/``writelines``,
``write_eof`` (plain TCP half-close), ``close``/``abort``, ``pause_reading``/
``resume_reading``, write-buffer limits calling the protocol's ``pause_writing``/
``resume_writing``, ``get_extra_info("sockname")``. ``connection_lost`` comes from the
loop (``call_soon``), never from inside a call of the protocol's own.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, ClassVar, Final

from proxy.readiness import (
    BROKEN,
    EDGE,
    EDGE_WRITES,
    ENDED,
    LEVEL_READS,
    LEVEL_WRITES,
    READABLE,
    WRITABLE,
    Readiness,
)
from webgateway.addresses import HostPort

#: Bytes asked per read: a whole burst of a fast backend in one wake-up, as uvloop does.
READ_SIZE: Final = 256 * 1024
#: Reads per wake-up before yielding to the loop's other callbacks (fairness).
READS_PER_TURN: Final = 8
#: A read or write that would block (TLS: OpenSSL wants the socket readable or writable).
WOULD_BLOCK: Final = (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                      ssl.SSLWantWriteError)
#: ``_mask`` of a socket not registered yet (0 is a registered one watching nothing: a
#: paused TLS socket with no writes queued).
UNWATCHED: Final = -1
#: A clean end of the peer's stream (TLS: close_notify, or FIN without it).
CLEAN_EOF: Final = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
#: Where every read lands before its bytes are copied out (one per process: a loop runs
#: in one thread and a read is copied before the next). ``recv(256 KiB)`` would allocate
#: 256 KiB per read, which glibc serves with an mmap and a munmap each time.
SCRATCH: Final = memoryview(bytearray(READ_SIZE))


class SocketTransport:
    __slots__ = ("_buffered", "_closed", "_closing", "_ended", "_eof", "_fd", "_high", "_loop",
                 "_low", "_mask", "_on_events", "_paused", "_protocol", "_readable",
                 "_readiness", "_recv_into", "_send", "_sock", "_write_eof", "_write_paused",
                 "_writes", "_writes_watched")

    #: Edge-triggered (plain TCP); ``TlsSocket`` is level-triggered (see proxy/readiness.py).
    EDGE: ClassVar[bool] = True

    def __init__(self, readiness: Readiness, sock: socket.socket, *, mask: int = 0) -> None:
        """``sock``: connected and non-blocking; ``mask``: what ``Connect`` registered it
        for, else it is registered after the first read (``_sync``), so that bytes already
        waiting are not announced by an event of their own. ``start`` hands it to a
        protocol. Nagle goes off (we forward whole records; with delayed ACKs it would
        stall small ones)."""
        try:  # noqa: SIM105  (contextlib.suppress: three calls of its own per connection)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._readiness = readiness
        self._loop = readiness.loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol: asyncio.Protocol | None = None
        self._writes: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._readable = self._ended = False
        self._paused = self._write_paused = False
        self._closing = self._closed = False
        self._eof = self._write_eof = False
        self._mask = mask or UNWATCHED
        self._writes_watched = bool(mask & LEVEL_WRITES)
        # The I/O primitives, bound once (no Python frame per read or write): bytes read
        # into a buffer (0 at the peer's clean end), bytes sent; both raise WOULD_BLOCK.
        self._recv_into: Callable[[memoryview], int] = sock.recv_into
        self._send: Callable[[bytes], int] = sock.send
        #: what the readiness events go to (``TlsSocket``: its handshake first)
        self._on_events: Callable[[int], None] = self._events
        if mask:
            readiness.hand_over(self._fd, self._events)

    def _wanted(self) -> int:
        """The events to watch for now."""
        if self.EDGE:
            return EDGE_WRITES if self._writes_watched else EDGE
        mask = LEVEL_WRITES if self._writes_watched else 0
        if not self._paused and not self._eof and not self._closing:
            mask |= LEVEL_READS  # closing, a readable socket would report itself forever
        return mask

    def _sync(self) -> None:
        """Register, or change what is watched, if it differs from what is wanted."""
        if self._closed:
            return
        wanted = self._wanted()
        if wanted == self._mask:
            return
        if self._mask != UNWATCHED:
            self._readiness.modify(self._fd, wanted)
        else:
            self._readiness.watch(self._fd, self._on_events, wanted)
        self._mask = wanted

    def _watch_writes(self, on: bool = True) -> None:
        """A write would block: the next writable event resumes it (``on=False``: the
        queue drained; only level-triggered sockets stop watching)."""
        if on != self._writes_watched and (on or not self.EDGE):
            self._writes_watched = on
            self._sync()

    # ------------------------------------------------------------ I/O primitives
    def _shut_write(self) -> None:
        """Our end of the stream (plain TCP: FIN). Errors are the caller's to ignore."""
        self._sock.shutdown(socket.SHUT_WR)

    # ------------------------------------------------------------ life cycle
    def _events(self, events: int) -> None:
        if events & WRITABLE and self._writes:
            self._write_ready()
        if events & READABLE and not self._closing:
            self._readable = True
            if events & ENDED:
                self._ended = True
            if self._protocol is not None and (not self._paused or self._ended):
                self._read_ready()

    def start(self, protocol: asyncio.Protocol, readable: bool = True) -> None:
        """Hand the connection to ``protocol`` and read what is there already (``readable``:
        an event may have come and gone before, or bytes wait that nobody signalled)."""
        self._protocol = protocol
        protocol.connection_made(self)  # type: ignore[arg-type]  # an asyncio.Transport look-alike
        self._readable = self._readable or readable
        if self._readable and not self._paused and not self._closing:
            self._read_ready()
        self._sync()

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        """A started connection changes hands (the tunnel node's spare backend connection)."""
        self._protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if not self.EDGE:
                self._sync()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if not self.EDGE:
                self._sync()
            if self._readable and not self._closing and self._protocol is not None:
                self._loop.call_soon(self._read_ready)  # not from inside the peer's call

    # ------------------------------------------------------------ writing
    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write(self, data: bytes) -> None:
        """Send now what the socket takes; queue the rest for the next writable edge
        (OpenSSL wants a write it could not finish retried with the same bytes, so a
        queued chunk is never merged)."""
        if self._closing or self._write_eof or not data:
            return
        if not self._writes:
            try:
                n = self._send(data)
            except WOULD_BLOCK:
                n = 0
            except OSError as e:  # ssl.SSLError included
                self._finish(e)
                return
            if n == len(data):
                return
            data = data[n:]
            self._watch_writes()
        self._writes.append(data)
        self._buffered += len(data)
        if not self._write_paused and self._buffered > self._high:
            self._write_paused = True
            if self._protocol is not None:
                self._protocol.pause_writing()

    def _write_ready(self) -> None:
        writes = self._writes
        while writes:
            head = writes[0]
            try:
                n = self._send(head)
            except WOULD_BLOCK:
                break
            except OSError as e:
                self._finish(e)
                return
            self._buffered -= n
            if n == len(head):
                writes.popleft()
            else:
                writes[0] = head[n:]
        if self._write_paused and self._buffered <= self._low:
            self._write_paused = False
            if self._protocol is not None:
                self._protocol.resume_writing()
        if not writes:
            if self._closing:
                self._shutdown()
                return
            self._watch_writes(False)
            if self._write_eof:
                self._end_write()

    def write_eof(self) -> None:
        """Half-close once what is queued is sent."""
        if self._closing or self._write_eof:
            return
        self._write_eof = True
        if not self._writes:
            self._end_write()

    def _end_write(self) -> None:
        try:
            self._shut_write()
        except OSError as e:
            self._finish(e)
            return
        if self._eof:  # both directions ended
            self._finish(None)

    # ------------------------------------------------------------ reading
    def _read_ready(self) -> None:
        """Read what the event announced. Level-triggered: one read, the next event says
        if there is more. Edge-triggered: on until the socket is drained (a read shorter
        than asked, unless the peer has ended: its EOF makes no new edge), at most
        ``READS_PER_TURN`` reads, the rest on the loop's next turn. Pausing or closing
        stops it."""
        scratch = SCRATCH
        for _ in range(READS_PER_TURN):
            if not self._readable or (self._paused and not self._ended) or self._closing:
                return
            try:
                n = self._recv_into(scratch)
            except WOULD_BLOCK:
                self._readable = False
                return
            except CLEAN_EOF:
                n = 0
            except OSError as e:
                self._finish(e)
                return
            protocol = self._protocol
            assert protocol is not None
            if n:
                protocol.data_received(scratch[:n].tobytes())
                if not self.EDGE or (n < len(scratch) and not self._ended):
                    self._readable = False
                    return
                continue
            self._eof, self._readable = True, False
            keep_open = protocol.eof_received() and self.can_write_eof()
            if not keep_open or self._write_eof:
                self.close()
            elif not self.EDGE:
                self._sync()  # level-triggered: EOF would be "readable" forever
            return
        self._loop.call_soon(self._read_ready)

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Flush what is queued, end our stream, close."""
        if self._closing:
            return
        self._closing = True
        if not self._writes:
            self._shutdown()
        elif not self.EDGE:
            self._sync()

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def _shutdown(self) -> None:
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closing = self._closed = True
        self._readable = False
        self._writes.clear()
        self._buffered = 0
        self._readiness.forget(self._fd)
        self._sock.close()
        self._on_events = _ignore  # was a method of ours: a reference cycle
        if self._protocol is not None:
            self._loop.call_soon(self._lost, exc if isinstance(exc, Exception) else None)

    def _lost(self, exc: Exception | None) -> None:
        """Tell the protocol, and let go of it: a transport and its protocol refer to each
        other, and a cycle would leave the whole connection to the garbage collector."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)


def _ignore(events: int) -> None:
    """What a closed transport does with a late event (its descriptor number reused)."""


def dial(readiness: Readiness, sock: socket.socket, backend: HostPort,
         owner: Callable[[int], None]) -> int:
    """Start a non-blocking connect of ``sock``, watched (edge-triggered, writes included:
    the writable edge says the connect ended) for ``owner``: 0, ``EINPROGRESS``, or why not."""
    try:
        readiness.watch(sock.fileno(), owner, EDGE_WRITES)
        return sock.connect_ex(backend.sockaddr)
    except OSError as e:
        return e.errno or errno.EINVAL


def connect_failure(sock: socket.socket, err: int | None = None) -> OSError | None:
    """Why a connect of ``sock`` failed (``err``: known already, 0 for success; None: ask
    the socket), or None."""
    if err is None:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    # OSError(ECONNREFUSED, ...) is made a ConnectionRefusedError: the metrics' reason.
    return OSError(err, os.strerror(err)) if err else None


class Connect:
    """A non-blocking TCP connect to ``backend``, bounded by ``timeout``: ``done`` gets the
    started transport, or None and why not (``OSError``, ``TimeoutError``). ``cancel``
    (shutdown) closes the socket; ``done`` is then never called."""

    __slots__ = ("done", "fd", "protocol", "readable", "readiness", "sock", "timer")

    def __init__(self, readiness: Readiness, backend: HostPort, protocol: asyncio.Protocol,
                 timeout: float,
                 done: Callable[[SocketTransport | None, BaseException | None], None]) -> None:
        self.readiness, self.protocol, self.done = readiness, protocol, done
        self.readable = False
        loop = readiness.loop
        self.sock = sock = socket.socket(backend.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.fd = sock.fileno()
        self.timer: asyncio.TimerHandle | None = None
        err = dial(readiness, sock, backend, self._events)
        if err == errno.EINPROGRESS:
            self.timer = loop.call_later(timeout, self._failed, TimeoutError("connect timed out"))
        else:  # done (or failed) at once: still answered from the loop, not from here
            loop.call_soon(self._connected, err)

    def _events(self, events: int) -> None:
        self.readable = self.readable or bool(events & READABLE)
        if events & WRITABLE:
            self._connected(None if events & BROKEN else 0)

    def _connected(self, err: int | None = None) -> None:
        if self.fd < 0:
            return  # cancelled, or already answered
        failure = connect_failure(self.sock, err)
        if failure is not None:
            self._failed(failure)
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = SocketTransport(self.readiness, self.sock, mask=EDGE_WRITES)
        self.fd = -1
        transport.start(self.protocol, self.readable)
        self.done(transport, None)

    def _failed(self, exc: BaseException) -> None:
        self.cancel()
        self.done(None, exc)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.fd >= 0:
            self.readiness.forget(self.fd)
            self.fd = -1
            self.sock.close()
