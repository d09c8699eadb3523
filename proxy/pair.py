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
close_notify. A tunnel name's pair (``TunnelPair``) has a stream inside a tunnel
connection as its backend. The general layers stay for what needs them: passthrough (the
client's TLS is not ours to read) and the node's side of a tunnel.
"""

from __future__ import annotations

import asyncio
import errno
import logging
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

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from proxy.engine import Engine
    from proxy.routes import Route
    from proxy.tlssocket import _Conn
    from tunnel.stream import Stream
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
        self._reach_backend()

    def _reach_backend(self) -> None:
        """Secured and counted: the backends in balancer order (``TunnelPair``: a node)."""
        self._order = self._engine.balancer.order(self._name.backends)
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
            self._up.insert(0, self._proxy_header())
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
        if self._up or not self.linked:
            self._up.append(data)
            if sum(map(len, self._up)) > PENDING_LIMIT:
                self._client_wants(self._cmask & ~LEVEL_READS)
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        """Client bytes to the linked backend, nothing queued before them."""
        backend = self._backend
        assert backend is not None
        try:
            sent = backend.send(data)
        except WOULD_BLOCK:
            sent = 0
        except OSError:
            self._close(notify=True)
            return
        if sent < len(data):
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
            if not self._to_client(SCRATCH[:n].tobytes()):
                return
            if n < READ_SIZE and not self._backend_hup:
                self._backend_readable = False
                return
        self.loop.call_soon(self._read_backend)

    def _to_client(self, data: bytes) -> bool:
        """Write backend bytes to the client: True when OpenSSL took them; else they wait
        as ``_down`` for the client to be writable (or the pair is closed)."""
        try:
            self._tls.write(data)
        except WOULD_BLOCK:
            self._down = data
            self._client_wants(self._cmask | LEVEL_WRITES)
            return False
        except OSError:
            self._close()
            return False
        return True

    def _proxy_header(self) -> bytes:
        """The PROXY v2 header for this client (``[name] proxy_protocol``)."""
        return header(self.client_addr, self._client.getsockname())

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
        self._read_backend()  # the backend's side goes on where it stopped

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
        self._close_backend(notify)
        self._up.clear()
        self._down = None
        self._engine.pair_done(self)

    def _close_backend(self, notify: bool) -> None:
        if self._backend is not None:
            self._readiness.forget(self._bfd)
            self._backend.close()
            self._backend = None


class TunnelPair(Pair):
    """A terminated connection to a tunnel name: its backend is a stream to one of the
    name's nodes (``tunnel.gateway``), or, with no node there, the name's own backends.

    The pair is the stream's protocol. The stream pushes what the node sends
    (``data_received``): written to the client, and a TLS write that would block pauses
    the stream (its tunnel connection) until the client is writable; the tunnel
    connection's full write buffer (``pause_writing``) stops reading the client. The
    node's END ends the pair once what it sent is written; the client's end sends END, and
    the connection goes back to the pool. The client's bytes read so far (and the PROXY
    header) go with OPEN, in one write.
    """

    __slots__ = ("_later", "_node_ended", "_stream")

    def __init__(self, engine: Engine, sock: socket.socket, client: tuple[str, int],
                 route: Route, ctx: ssl.SSLContext, deadline: float, sni: str | None) -> None:
        self._stream: Stream | None = None
        self._later: list[bytes] = []  # node bytes behind a TLS write that would block
        self._node_ended = False  # the node's END came while bytes wait for the client
        super().__init__(engine, sock, client, route, ctx, deadline, sni)

    def _reach_backend(self) -> None:
        tunnels = self._engine.tunnels
        assert tunnels is not None
        self._from_client(READABLE)  # the request usually came with the client's Finished
        if self._closed:
            return
        first = self._up  # goes with OPEN
        if self._name.name.proxy_protocol:
            first = [self._proxy_header(), *first]
        opened = tunnels.open_now(self._name.name.label, self._protocol, self._node_refused,
                                  first)
        if opened is not None:
            self._up = []  # sent with OPEN
            self._opened(opened[2])
        else:
            self._engine.spawn(self._wait_for_node())

    def _protocol(self) -> asyncio.Protocol:
        return self  # type: ignore[return-value]  # an asyncio.Protocol look-alike

    async def _wait_for_node(self) -> None:
        """No connection pooled now: wait for one, else the name's backends."""
        engine = self._engine
        assert engine.tunnels is not None
        try:
            transport, _, release = await engine.tunnels.open(
                self._name.name.label, self._protocol, engine.limits.connect_timeout,
                self._node_refused)
        except (OSError, TimeoutError) as e:
            if not self._closed:
                log.debug("no tunnel stream for %s: %s", self.route, e or "timeout")
                self._failed = True
                Pair._reach_backend(self)
            return
        if self._closed:  # left while the stream opened: give it back now
            transport.close()
            release()
            return
        if self._name.name.proxy_protocol:
            self._up.insert(0, self._proxy_header())
        self._opened(release)

    def _opened(self, release: Callable[[], None]) -> None:
        self.release, self.linked, self.outcome = release, True, "ok"
        self._watch_idle()
        up, self._up = self._up, []
        for data in up:
            self._forward(data)
        if self._ended:
            self._close(notify=True)

    def _node_refused(self, reason: str) -> None:
        """The node could not reach its backend (or the connection closed first): nothing
        came back yet, so the 502 page still fits."""
        self._engine.node_refused(self._name, reason)
        if not self._closed and not self._nout:
            self._answer("backend_unreachable", BAD_GATEWAY)

    def _forward(self, data: bytes) -> None:
        if self._stream is None:
            super()._forward(data)  # the name's own backend
        else:
            self._stream.write(data)

    def _client_ended(self) -> None:
        if self._stream is None and not self.linked and self._up:
            self._ended = True  # sent once the stream opens (its END right after)
            self._client_wants(self._cmask & ~LEVEL_READS)
            return
        super()._client_ended()

    # ------------------------------------------------------------ the stream's protocol
    def connection_made(self, transport: Stream) -> None:
        self._stream = transport

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.activity += 1
        self._nout += len(data)
        if self._down is not None:
            self._later.append(data)  # one read of the tunnel may hold several frames
            return
        self._to_client(data)

    def _to_client(self, data: bytes) -> bool:
        if super()._to_client(data):
            return True
        if self._stream is not None and self._down is not None:
            self._stream.pause_reading()  # until the client is writable
        return False

    def eof_received(self) -> bool:
        """The node's END: the client gets what came before it, then our close_notify."""
        if self._down is None:
            self._close(notify=True)
        else:
            self._node_ended = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream = None
        if not self._closed:
            self._close(notify=exc is None and self._down is None)

    def pause_writing(self) -> None:
        if not self._closed:
            self._client_wants(self._cmask & ~LEVEL_READS)

    def resume_writing(self) -> None:
        if not self._closed:
            self._client_wants(self._cmask | LEVEL_READS)

    def _read_backend(self) -> None:
        """The client took a blocked write: what waited behind it, then the stream again."""
        if self._stream is None:
            super()._read_backend()
            return
        while self._later and self._down is None and not self._closed:
            self._to_client(self._later.pop(0))
        stream = self._stream
        if self._down is None and not self._closed and stream is not None:
            if self._node_ended:
                self._close(notify=True)
            else:
                stream.resume_reading()

    def _close_backend(self, notify: bool) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            if notify:
                stream.close()  # END: the connection goes back to the pool
            else:
                stream.abort()
        self._later.clear()
        super()._close_backend(notify)

    def held(self) -> int:
        return super().held() + sum(map(len, self._later))
