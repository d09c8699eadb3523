"""TLS on the accepted socket itself: OpenSSL reads and writes the descriptor.

uvloop's TLS transport runs OpenSSL over memory BIOs: each record is read from the socket
into a buffer, copied into the BIO, decrypted, and the reverse on the way out, with a
protocol object and its state machine per connection around it. Here OpenSSL's socket BIO
does the I/O on the non-blocking descriptor and the event loop only says when it is
readable or writable. That is what nginx does, and per new connection it is the cheaper
path (measured in bench/README.md).

``TlsSocket`` is the handshake (bounded by a deadline) and then a transport look-alike with
what the splice uses: ``write``, ``close``/``abort``, ``pause_reading``/``resume_reading``,
write-buffer limits that call the protocol's ``pause_writing``/``resume_writing``, and
``get_extra_info`` for the local address and the negotiated ALPN. TLS has no half-close:
the peer's close_notify (or FIN) ends the connection after ``eof_received``. Closing sends
our close_notify and closes the socket at once, as nginx does.

The connection object comes from ``SSLContext._wrap_socket`` (CPython's, since 3.7): the
public ``wrap_socket`` builds an ``SSLSocket`` around it that costs a syscall and
several Python-level calls per connection and per read or write, for nothing used here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from typing import Any, Protocol, cast

#: Plaintext asked of OpenSSL per read: a whole record (at most 16 KiB) always fits.
READ_SIZE = 64 * 1024


class _Conn(Protocol):
    """The part of CPython's ``_ssl._SSLSocket`` used here."""

    def do_handshake(self) -> None: ...
    def read(self, n: int) -> bytes: ...
    def write(self, data: bytes) -> int: ...
    def shutdown(self) -> object: ...
    def selected_alpn_protocol(self) -> str | None: ...


class TlsSocket:
    __slots__ = ("_buffered", "_closed", "_closing", "_conn", "_fd", "_high", "_loop", "_low",
                 "_paused", "_protocol", "_reading", "_sock", "_waiter", "_write_paused",
                 "_writes", "_writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 ctx: ssl.SSLContext) -> None:
        """``sock``: accepted, non-blocking, its ClientHello unread."""
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._conn = cast(_Conn, ctx._wrap_socket(sock, True))  # type: ignore[attr-defined]
        self._protocol: asyncio.Protocol | None = None
        self._writes: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._reading = self._writing = False
        self._paused = self._write_paused = False
        self._closing = self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    # -------------------------------------------------------------------- handshake
    async def handshake(self, timeout: float) -> None:  # noqa: ASYNC109
        """Complete the server handshake or raise (``ssl.SSLError``, ``OSError``,
        ``TimeoutError``); on any failure, cancellation included, the socket is closed."""
        self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._handshake_timeout)
        try:
            self._handshake_step()
            await self._waiter
        except BaseException:
            self.abort()
            raise
        finally:
            timer.cancel()
            self._waiter = None
            self._watch(read=None, write=None)

    def _handshake_timeout(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError("TLS handshake timed out"))

    def _handshake_step(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            self._conn.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(read=self._handshake_step, write=None)
        except ssl.SSLWantWriteError:
            self._watch(read=None, write=self._handshake_step)
        except (OSError, ssl.SSLError) as e:
            waiter.set_exception(e)
        else:
            waiter.set_result(None)

    def _watch(self, *, read: Any, write: Any) -> None:
        """Register (a callback) or drop (None) interest in readability and writability."""
        if read is not None:
            self._loop.add_reader(self._fd, read)
            self._reading = True
        elif self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if write is not None:
            self._loop.add_writer(self._fd, write)
            self._writing = True
        elif self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def start(self, protocol: asyncio.Protocol) -> None:
        """After the handshake: hand the connection to ``protocol`` and start reading."""
        self._protocol = protocol
        protocol.connection_made(cast(asyncio.Transport, self))
        if not self._closing and not self._paused:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    # -------------------------------------------------------------------- transport
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "ssl_object":
            return self._conn
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if not self._paused and not self._closing:
            self._paused = True
            if self._reading:
                self._loop.remove_reader(self._fd)
                self._reading = False

    def resume_reading(self) -> None:
        if self._paused and not self._closing:
            self._paused = False
            if not self._reading and self._protocol is not None:
                self._loop.add_reader(self._fd, self._read_ready)
                self._reading = True

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write(self, data: bytes) -> None:
        """Send now what the socket takes; queue the rest (OpenSSL wants a write it could
        not finish retried with the same bytes, so a queued chunk is never merged)."""
        if self._closing or not data:
            return
        if not self._writes:
            try:
                n = self._conn.write(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            except (OSError, ssl.SSLError) as e:
                self._finish(e)
                return
            if n == len(data):
                return
            data = data[n:]
            self._loop.add_writer(self._fd, self._write_ready)
            self._writing = True
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
                n = self._conn.write(head)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except (OSError, ssl.SSLError) as e:
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
            self._loop.remove_writer(self._fd)
            self._writing = False
            if self._closing:
                self._shutdown()

    def _read_ready(self) -> None:
        try:
            data = self._conn.read(READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except (OSError, ssl.SSLError) as e:
            self._finish(e)
            return
        protocol = self._protocol
        assert protocol is not None
        if data:
            protocol.data_received(data)
            return
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        protocol.eof_received()
        self.close()

    def close(self) -> None:
        """Flush what is queued, send close_notify, close."""
        if self._closing:
            return
        self._closing = True
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if not self._writes:
            self._shutdown()

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            self._conn.shutdown()  # sends close_notify; the peer's is not waited for
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closing = self._closed = True
        self._watch(read=None, write=None)
        self._writes.clear()
        self._buffered = 0
        self._sock.close()
        if self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost,
                                 exc if isinstance(exc, Exception) else None)
