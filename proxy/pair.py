"""A terminated connection and its TCP backend as one object: the pair the proxy serves most.

A new TLS connection to a name with TCP backends is the proxy's commonest unit of work, and
its CPU cost is what bench/README.md compares with nginx stream. Through the general layers
(``TlsSocket`` and ``SocketTransport``, asyncio-style transports; two ``Half`` protocols
joined by a ``Splice``; a ``Dial``) it took ~135 Python calls around the syscalls a bare
loop makes with ~25 (``sys.setprofile``). So for this one case one object does what they
do: the handshake under its deadline, the name's connection cap, the backends in balancer
order under the backend policy and the connect timeout, the PROXY header, both directions,
the idle timeout, the 502 and 503 pages, and the same accounting (``PairState``). Both
sockets sit on the engine's ``Readiness``: the client's level-triggered (TLS), the
backend's edge-triggered, as in ``SocketTransport``.

Flow control: at most one chunk is held per direction. A chunk the backend did not take
stops reading the client until the backend's writable edge has taken it; a TLS write the
client's socket did not take (OpenSSL wants it again, whole) stops reading the backend
until the client is writable. A slow reader at either end so costs the proxy one read
(``READ_SIZE``) and stalls the other end in its own TCP window. Before the backend is
connected, up to ``PENDING_LIMIT`` of the client's bytes wait.

TLS has no half-close: the client's end (close_notify or FIN) ends the pair once what it
sent has reached the backend; the backend's end, once what it sent is written, with our
close_notify. The general layers stay for what needs them: passthrough, and tunnel names,
whose backend is a stream inside a tunnel connection.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.errorpages import BAD_GATEWAY, SERVICE_UNAVAILABLE, page_fits
from proxy.proxyproto import header
from proxy.readiness import BROKEN, ENDED, LEVEL_READS, LEVEL_WRITES, READABLE, WRITABLE
from proxy.sockettransport import (
    READ_SIZE,
    READS_PER_TURN,
    SCRATCH,
    UNWATCHED,
    WOULD_BLOCK,
    connect_failure,
    dial,
)
from proxy.splice import PENDING_LIMIT, PairState
from proxy.tlssocket import failure_reason

if TYPE_CHECKING:
    from proxy.engine import Engine
    from proxy.routes import Route
    from proxy.tlssocket import _Conn
    from webgateway.addresses import HostPort


class Pair(PairState):
    __slots__ = ("__weakref__", "_backend", "_backend_hup", "_backend_readable", "_bfd", "_cfd",
                 "_client", "_closed", "_cmask", "_deadlines", "_dialing", "_down", "_ended",
                 "_engine", "_failed", "_name", "_nin", "_nout", "_order", "_readiness",
                 "_refused", "_secured", "_tls", "_tried", "_up", "waits")

    def __init__(self, engine: Engine, sock: socket.socket, client: tuple[str, int],
                 route: Route, ctx: ssl.SSLContext, deadline: float, sni: str | None) -> None:
        """``sock``: accepted, non-blocking, its ClientHello waiting unread; ``deadline``
        (loop time): the handshake's."""
        readiness = engine.readiness()
        super().__init__(readiness.loop, engine.limits.idle_timeout)
        self.client_addr, self.sni = client, sni
        self.started = deadline - engine.limits.handshake_timeout
        self.route, self.mode = route.name.label, "terminate"
        self._engine, self._readiness, self._name = engine, readiness, route
        self._deadlines = engine.deadlines()
        self.waits = 0  # counted up as each wait (handshake, connect, idle tick) ends
        try:  # noqa: SIM105  (contextlib.suppress: three calls of its own per connection)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._client = sock
        self._cfd = sock.fileno()
        self._tls: _Conn = ctx._wrap_socket(sock, True)  # type: ignore[attr-defined]
        self._cmask = UNWATCHED
        self._backend: socket.socket | None = None
        self._bfd = -1
        self._dialing: HostPort | None = None
        self._order: list[HostPort] = []
        self._tried = 0
        self._refused = self._failed = False
        self._up: list[bytes] = []  # client bytes the backend has not taken yet
        self._down: bytes | None = None  # a TLS write to give OpenSSL again
        self._nin = self._nout = 0
        self._backend_readable = self._backend_hup = False
        self._ended = False  # the client has ended; its last bytes wait for the backend
        self._secured = self._closed = False
        engine.splices.add(self)
        self._deadlines.add(self, deadline)
        self._handshake(0)

    # ------------------------------------------------------------ PairState
    def carried(self) -> tuple[int, int]:
        return self._nin, self._nout

    def held(self) -> int:
        return sum(map(len, self._up)) + len(self._down or b"")

    def abort(self) -> None:
        self._close()

    # ------------------------------------------------------------ the client's socket
    def _client_wants(self, mask: int, owner: Callable[[int], None] | None = None) -> None:
        """Watch the client's socket for ``mask`` (level-triggered); registered the first
        time with ``owner`` (default: the pump)."""
        if mask == self._cmask:
            return
        if self._cmask == UNWATCHED:
            self._readiness.watch(self._cfd, owner or self._from_client, mask)
        else:
            self._readiness.modify(self._cfd, mask)
        self._cmask = mask

    def _handshake(self, events: int) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._client_wants(LEVEL_READS, self._handshake)
            return
        except ssl.SSLWantWriteError:
            self._client_wants(LEVEL_WRITES, self._handshake)
            return
        except OSError as e:  # ssl.SSLError included
            self._handshake_failed(e)
            return
        self._secured = True
        self.waits += 1
        if self._cmask != UNWATCHED:
            self._readiness.hand_over(self._cfd, self._from_client)
        engine = self._engine
        if not engine.claim(self, self._name):
            self._answer("over_cap", SERVICE_UNAVAILABLE)
            return
        self._client_wants(LEVEL_READS)  # the request is read while the backend connects
        self._order = engine.balancer.order(self._name.backends)
        self._dial()

    def _handshake_failed(self, e: BaseException) -> None:
        self.outcome, self.reason = "handshake_failed", failure_reason(e)
        self._close()

    def _answer(self, outcome: str, page: bytes) -> None:
        """No backend will answer: our page (HTTP/1), then close."""
        self.outcome = outcome
        if page_fits(self._tls.selected_alpn_protocol()):
            try:  # noqa: SIM105
                self._tls.write(page)  # a fresh connection's socket takes it whole
            except OSError:
                pass
        self._close(notify=True)

    # ------------------------------------------------------------ the backend's connect
    def _dial(self) -> None:
        """The next backend the policy allows, else the 502 page."""
        engine = self._engine
        while self._tried < len(self._order):
            b = self._order[self._tried]
            self._tried += 1
            refusal = engine.policy.judge(b)
            if refusal is not None:
                engine.refused(self._name, refusal)
                self._refused = True
                continue
            sock = socket.socket(b.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            self._backend, self._bfd, self._dialing = sock, sock.fileno(), b
            err = dial(self._readiness, sock, b, self._connecting)
            if err == errno.EINPROGRESS:
                self._deadlines.add(self, self.loop.time() + engine.limits.connect_timeout)
            else:
                self._connected(err)
            return
        self._answer("backend_refused" if self._refused and not self._failed
                     else "backend_unreachable", BAD_GATEWAY)

    def _connecting(self, events: int) -> None:
        if events & READABLE:
            self._backend_readable = True
        if events & WRITABLE:
            self._connected(None if events & BROKEN else 0)

    def _connected(self, err: int | None) -> None:
        sock, b = self._backend, self._dialing
        assert sock is not None and b is not None
        failure = connect_failure(sock, err)
        if failure is not None:
            self._connect_failed(failure)
            return
        self.waits += 1
        engine = self._engine
        engine.balancer.acquire(b)
        self.backend_addr, self.linked, self.outcome = b, True, "ok"
        self._readiness.hand_over(self._bfd, self._from_backend)
        if self._name.name.proxy_protocol:
            self._up.insert(0, header(self.client_addr, self._client.getsockname()))
        self._watch_idle()
        if self._up:
            self._send_up()
        if self._backend_readable:
            self._read_backend()

    def _connect_failed(self, exc: BaseException) -> None:
        self.waits += 1
        b, sock = self._dialing, self._backend
        assert b is not None and sock is not None
        self._readiness.forget(self._bfd)
        sock.close()
        self._backend, self._bfd, self._dialing = None, -1, None
        self._backend_readable = False
        self._engine.backend_failed(self._name, b, exc)
        self._failed = True
        self._dial()

    # ------------------------------------------------------------ deadlines
    def expired(self) -> None:
        """The handshake's, the connect's, or an idle tick's time is up."""
        if not self._secured:
            self._handshake_failed(TimeoutError("TLS handshake timed out"))
        elif not self.linked:
            self._connect_failed(TimeoutError("connect timed out"))
        elif self._still_active():
            self._watch_idle()

    def _watch_idle(self) -> None:
        self._deadlines.add(self, self.loop.time() + self._idle / 2)

    # ------------------------------------------------------------ the pump
    def _from_client(self, events: int) -> None:
        if events & WRITABLE and self._down is not None:
            self._write_down()
        if not events & READABLE or not self._cmask & LEVEL_READS or self._closed:
            return
        try:
            n = self._tls.read(READ_SIZE, SCRATCH)
        except WOULD_BLOCK:
            return
        except OSError:  # close_notify, FIN without it, or an error: the client's end
            n = 0
        if not n:
            self._client_ended()
            return
        self.activity += 1
        self._nin += n
        data = SCRATCH[:n].tobytes()
        backend = self._backend
        if self._up or backend is None or not self.linked:
            self._up.append(data)
            if sum(map(len, self._up)) > PENDING_LIMIT:
                self._client_wants(self._cmask & ~LEVEL_READS)
            return
        try:
            sent = backend.send(data)
        except WOULD_BLOCK:
            sent = 0
        except OSError:
            self._close(notify=True)
            return
        if sent < n:
            self._up.append(data[sent:])
            self._client_wants(self._cmask & ~LEVEL_READS)  # the backend's edge resumes it

    def _client_ended(self) -> None:
        if self.linked and self._up:
            self._ended = True  # closed once the backend has taken them
            self._client_wants(self._cmask & ~LEVEL_READS)
            return
        self._close(notify=True)

    def _send_up(self) -> None:
        up, backend = self._up, self._backend
        assert backend is not None
        while up:
            head = up[0]
            try:
                n = backend.send(head)
            except WOULD_BLOCK:
                return
            except OSError:
                self._close(notify=True)
                return
            if n < len(head):
                up[0] = head[n:]
                return
            del up[0]
        if self._ended:
            self._close(notify=True)
            return
        self._client_wants(self._cmask | LEVEL_READS)

    def _from_backend(self, events: int) -> None:
        if events & WRITABLE and self._up:
            self._send_up()
        if events & READABLE:
            self._backend_readable = True
            if events & ENDED:
                self._backend_hup = True  # its end makes no new edge: read on to it
            self._read_backend()

    def _read_backend(self) -> None:
        """Read until the socket would block (edge-triggered), at most ``READS_PER_TURN``
        reads per turn of the loop; a TLS write that would block stops it."""
        for _ in range(READS_PER_TURN):
            backend = self._backend
            if not self._backend_readable or self._down is not None or backend is None:
                return
            try:
                n = backend.recv_into(SCRATCH)
            except WOULD_BLOCK:
                self._backend_readable = False
                return
            except OSError:
                n = 0
            if not n:
                self._close(notify=True)  # the response is complete: close_notify, close
                return
            self.activity += 1
            self._nout += n
            data = SCRATCH[:n].tobytes()
            try:
                self._tls.write(data)
            except WOULD_BLOCK:
                self._down = data
                self._client_wants(self._cmask | LEVEL_WRITES)
                return
            except OSError:
                self._close()
                return
            if n < READ_SIZE and not self._backend_hup:
                self._backend_readable = False
                return
        self.loop.call_soon(self._read_backend)

    def _write_down(self) -> None:
        assert self._down is not None
        try:
            self._tls.write(self._down)
        except WOULD_BLOCK:
            return
        except OSError:
            self._close()
            return
        self._down = None
        self._client_wants(self._cmask & ~LEVEL_WRITES)
        self._read_backend()

    # ------------------------------------------------------------ the end
    def _close(self, notify: bool = False) -> None:
        """Close both sockets (``notify``: our close_notify first) and account, once."""
        if self._closed:
            return
        self._closed = True
        self.waits += 1
        readiness = self._readiness
        if notify:
            try:  # noqa: SIM105
                self._tls.shutdown()  # the peer's close_notify is not waited for
            except OSError:
                pass
        readiness.forget(self._cfd)
        self._client.close()
        if self._backend is not None:
            readiness.forget(self._bfd)
            self._backend.close()
            self._backend = None
        self._up.clear()
        self._down = None
        self._engine.pair_done(self)
