"""TLS on the accepted socket itself: OpenSSL reads and writes the descriptor.

uvloop's TLS transport runs OpenSSL over memory BIOs: each record is read from the socket
into a buffer, copied into the BIO, decrypted, and the reverse on the way out, with a
protocol object and its state machine per connection around it. Here OpenSSL's socket BIO
does the I/O on the non-blocking descriptor and the event loop only says when it is
readable or writable. That is what nginx does, and per new connection it is the cheaper
path (measured in bench/README.md).

``TlsSocket`` is the handshake (bounded by a deadline, reported to a callback: no task or
future per connection) and then a ``SocketTransport`` whose reads and writes are
OpenSSL's, on the same (level-triggered) registration. The server's end of an accepted
socket (browsers, tunnel nodes), or with ``server_hostname`` the client's end of a
connected one (a tunnel node dialling its gateway: the certificate verified against that
name, a saved session offered for resumption). TLS has no half-close: the peer's
close_notify (or FIN) ends the connection after ``eof_received``. Closing sends our
close_notify and closes the socket at once, as nginx does.

The connection object comes from ``SSLContext._wrap_socket`` (CPython's, since 3.7): the
public ``wrap_socket`` builds an ``SSLSocket`` around it that costs a syscall and
several Python-level calls per connection and per read or write, for nothing used here.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Any, ClassVar, Final, Protocol

from proxy.readiness import Readiness
from proxy.sockettransport import READ_SIZE, UNWATCHED, WOULD_BLOCK, SocketTransport


class _Conn(Protocol):
    """The part of CPython's ``_ssl._SSLSocket`` used here."""

    def do_handshake(self) -> None: ...
    def read(self, n: int, buffer: memoryview) -> int: ...
    def write(self, data: bytes) -> int: ...
    def shutdown(self) -> object: ...
    def selected_alpn_protocol(self) -> str | None: ...
    @property
    def session(self) -> ssl.SSLSession | None: ...
    @property
    def session_reused(self) -> bool: ...


#: The most plaintext one TLS record carries (2^14): a read that returned this much was
#: likely not the last record waiting.
RECORD: Final = 16 * 1024


class TlsSocket(SocketTransport):
    __slots__ = ("_conn", "_on_handshake", "_timer")

    EDGE: ClassVar[bool] = False

    def __init__(self, readiness: Readiness, sock: socket.socket, ctx: ssl.SSLContext, *,
                 server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None, bulk: bool = False) -> None:
        """``sock``: non-blocking; accepted, its ClientHello unread, or with
        ``server_hostname`` connected, the client's end (``session``: one to resume).
        ``bulk``: a read goes on while records come full (``_read_records``)."""
        conn: _Conn
        if server_hostname is None:
            conn = ctx._wrap_socket(sock, True)  # type: ignore[attr-defined]
        else:
            conn = ctx._wrap_socket(sock, False,  # type: ignore[attr-defined]
                                    ctx._encode_hostname(server_hostname),  # type: ignore[attr-defined]
                                    session=session)
        self._conn = conn
        self._on_handshake: Callable[[BaseException | None], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        super().__init__(readiness, sock)
        self._recv_into = (self._read_records if bulk
                           else functools.partial(conn.read, READ_SIZE))
        self._send = conn.write
        self._on_events = self._handshake_events

    def _read_records(self, buf: memoryview) -> int:
        """One read, and more while each returns a full record (a burst of bulk data),
        into one buffer: one ``data_received`` per burst, not one per 16 KiB record and
        wake-up of the loop. A short record (the usual end of a message) ends it at once,
        so small messages cost nothing more; so does a read that would block, the peer's
        end or an error, which the next read meets again (the socket stays readable)."""
        read = self._conn.read
        n = last = read(READ_SIZE, buf)
        while last == RECORD and n + RECORD <= READ_SIZE:
            try:
                last = read(READ_SIZE - n, buf[n:])
            except OSError:  # ssl.SSLError included
                break
            n += last
        return n

    def _shut_write(self) -> None:
        self._conn.shutdown()  # close_notify; the peer's is not waited for

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._conn
        return super().get_extra_info(name, default)

    # -------------------------------------------------------------------- handshake
    def handshake(self, timeout: float, done: Callable[[BaseException | None], None]) -> None:
        """Run the handshake: ``done(None)`` once complete (then ``start``), or
        ``done(exc)`` (``ssl.SSLError``, ``ssl.SSLCertVerificationError`` for a client
        whose peer does not verify, ``OSError``, ``TimeoutError``) with the socket closed.
        ``abort`` meanwhile closes it without calling ``done``. The first step runs now
        (a server's on the waiting hello, a client's sends its own); the socket is
        registered after it."""
        self._on_handshake = done
        self._timer = self._loop.call_later(timeout, self._handshake_over,
                                            TimeoutError("TLS handshake timed out"))
        self._handshake_step()
        if self._on_handshake is not None:
            self._sync()

    def _handshake_events(self, events: int) -> None:
        self._handshake_step()

    def _handshake_step(self) -> None:
        try:
            self._conn.do_handshake()
        except ssl.SSLWantWriteError:
            self._watch_writes()  # the next writable edge resumes it
            return
        except WOULD_BLOCK:
            return  # the next edge (more of the client's flight) resumes it
        except OSError as e:  # ssl.SSLError included
            self._handshake_over(e)
            return
        self._handshake_over(None)

    def _handshake_over(self, exc: BaseException | None) -> None:
        done, self._on_handshake = self._on_handshake, None
        if done is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None:
            self._finish(exc)
        else:
            self._on_events = self._events
            if self._mask != UNWATCHED:
                self._readiness.hand_over(self._fd, self._events)
            self._watch_writes(False)
        done(exc)

    # -------------------------------------------------------------------- closing
    def _shutdown(self) -> None:
        try:  # noqa: SIM105  (contextlib.suppress: three calls of its own per connection)
            self._conn.shutdown()  # sends close_notify; the peer's is not waited for
        except OSError:  # ssl.SSLError included
            pass
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._on_handshake is not None:  # aborted mid-handshake: nobody to tell
            self._on_handshake = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        super()._finish(exc)


def failure_reason(e: BaseException) -> str:
    """The ``reason`` of a failed TLS handshake (metrics and the access log)."""
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return "tls_error"
    return "client_closed"
