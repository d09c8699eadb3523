"""The node's side (``webgateway tunnel``): keep idle connections at every gateway, serve them.

For each gateway the node keeps up to ``pool`` connections dialled, authenticated and
idle (pinging, see ``wire.Liveness``). When the gateway OPENs one for a client, the
client's bytes follow at once; the node connects to ``--to`` meanwhile (holding those
bytes) and splices the two (the proxy's own byte pump over a ``tunnel.stream``, so
back-pressure works the same way: a slow side pauses reading on the other). When the
stream ends (END both ways) the connection is idle again for the gateway's next client.

So back-to-back clients dial nothing; more clients at once than spare connections do:
when the spare ones (idle + being dialled) fall below ``low_water`` the node tops the
pool up to ``pool`` in one go, after the stream that took it has its backend's first
answer (or at once when none is left), so a replacement's TLS handshake rarely shares
the cores with a stream's first bytes. A link that served nothing for ``shrink_after``
seconds keeps one idle connection (each costs the gateway ~20 KiB); after a burst the
gateway caps the idle ones per name (FULL).

A connection that fails or is lost is redialled after a jittered exponential back-off
capped at 30 s, forever: a gateway restart, a network outage or a refused token never
needs the node to be restarted.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import ssl
from collections.abc import Callable
from typing import Final, cast

from proxy.readiness import Readiness
from proxy.sockettransport import SocketTransport
from proxy.splice import Half, Splice
from proxy.tlssocket import TlsSocket
from tunnel import wire
from tunnel.backoff import Backoff
from tunnel.connect import connect_tcp
from tunnel.pool import Pool
from tunnel.preconnect import Preconnect
from tunnel.settings import Endpoint, NodeSettings
from tunnel.stream import Carrier, Stream

log = logging.getLogger(__name__)

#: Longest a node-side stream may sit without traffic in either direction.
STREAM_IDLE: Final = 3600.0
#: Longest a refill waits for the stream that triggered it to get its first answer.
REFILL_WAIT: Final = 0.1


class Outcome(enum.Enum):
    """How a dial ended."""

    ACCEPTED = "accepted"  # in the pool: the connection lives on by itself
    PARKED = "parked"  # turned away: the gateway keeps no more idle connections of ours
    LOST = "lost"  # failed, refused or timed out: back off, then dial again


class _Answering(Half):
    """The backend side of a node's stream: says once that the backend answered.

    The pool's refill waits for it (or ``REFILL_WAIT``): its TLS handshakes, on both
    ends, then no longer compete with this stream's first response bytes. The spare
    backend connection waits longer, for the stream's end (or ``REFILL_WAIT``): made at
    the first answer, its connect woke the backend to accept it just as the response
    went on through the gateway to the client (both on the same cores).
    """

    __slots__ = ("answered",)

    def __init__(self, splice: Splice, answered: Callable[[], None]) -> None:
        super().__init__(splice)
        self.answered: Callable[[], None] | None = answered

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.answered is not None:
            answered, self.answered = self.answered, None
            answered()


class ResumingContext(ssl.SSLContext):
    """A client context that keeps the last session the gateway gave us, to offer it on
    the next dial (a ticket instead of a certificate chain to send, sign and verify takes
    most of the handshake's CPU off both ends)."""

    session: ssl.SSLSession | None = None


def client_context(settings: NodeSettings) -> ResumingContext:
    """Verify the gateway like a browser would: system roots (or ``ca``) and the name.

    One per gateway: a session is only good with the gateway that issued it.
    """
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    if settings.ca:
        ctx.load_verify_locations(cafile=str(settings.ca))
    else:
        ctx.load_default_certs()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([wire.ALPN])
    return ctx


class NodeConn(Carrier):
    """One pooled connection: HELLO, then idle and streams in turn until it closes."""

    def __init__(self, link: GatewayLink, done: asyncio.Future[Outcome]) -> None:
        self.link = link
        self.done = done  # the dial's outcome: accepted, turned away or lost
        self.conn = wire.Connection(wire.Role.NODE)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_pong = 0.0
        self.last_ping = 0.0
        self.accepted = False
        self.busy = False  # serving a stream (counted busy in the pool)
        self.park = False  # closed by us or turned away: nothing dials in its place
        self.stream: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != wire.ALPN:
            self.link.problem(f"the gateway does not speak {wire.ALPN} (ALPN {alpn!r}):"
                              " not a webgateway, or one without tunnels")
            self.transport.close()
            return
        if ssl_object.session_reused:
            log.debug("gateway %s: TLS session resumed", self.link.gateway)
        s = self.link.settings
        self.transport.write(self.conn.hello(s.name, s.token, self.link.session))
        self.timer = self.link.loop.call_later(s.connect_timeout, self._no_answer)

    def _no_answer(self) -> None:
        self.timer = None
        if self.conn.state is wire.State.AUTH:
            self.link.problem("no answer to HELLO in time")
            self._close()

    def received(self, data: bytes) -> None:
        try:
            events = self.conn.receive(data)
        except wire.ProtocolError as e:
            self.link.problem(f"the gateway broke the protocol: {e}")
            self._close()
            return
        i, n = 0, len(events)
        while i < n:
            ev = events[i]
            i += 1
            if self.stream_event(ev):
                continue
            if ev is wire.OPEN:  # receive hands out the constants
                # The client's bytes that came with OPEN: to the backend before the rest.
                first = events[i] if i < n else None
                if type(first) is wire.Data:
                    i += 1
                    self._open(first.data)
                else:
                    self._open(b"")
            elif ev is wire.PONG:
                self.last_pong = self.link.loop.time()
            elif ev is wire.ACCEPTED:
                self.accepted = True
                self._keep_session()
                self.link.accepted(self)
                self._finish(Outcome.ACCEPTED)
                self._idle()
            elif ev is wire.FULL:
                log.debug("gateway %s keeps no more idle connections for %s: one fewer",
                          self.link.gateway, self.link.settings.name)
                self.park = True
                self._close()
            elif isinstance(ev, wire.Refused):
                self.link.problem(f"the gateway refused: {ev.reason}")
                self._close()

    def _keep_session(self) -> None:
        """Remember the session for the next dial (its ticket has arrived by now)."""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None and ssl_object.session is not None:
            self.link.ctx.session = ssl_object.session

    def _idle(self) -> None:
        self.last_pong = self.last_ping = self.link.loop.time()
        self._arm()

    def _arm(self) -> None:
        self._cancel_timer()
        self.timer = self.link.loop.call_later(self.link.liveness.check_every, self._heartbeat)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _heartbeat(self) -> None:
        self.timer = None
        if self.conn.state is not wire.State.IDLE or self.transport is None:
            return
        now, live = self.link.loop.time(), self.link.liveness
        if now - self.last_pong > live.dead_after:
            self.link.problem(f"no PONG for {live.dead_after:.0f} s: the connection is dead")
            self.transport.abort()
            return
        if now - self.last_ping >= live.ping_every:
            self.last_ping = now
            self.transport.write(self.conn.ping())
        self._arm()

    def _open(self, first: bytes | memoryview) -> None:
        """A stream: its splice reads the tunnel side from now on (bytes wait in it) while
        the backend connects. With a spare backend connection, ``first`` (the client's
        bytes that came with OPEN) is written to it before anything else is set up when
        it is small (a request's head: it cannot fill the socket's buffer, so no pause
        is missed); otherwise it waits in the splice like any other bytes."""
        transport = self.transport
        assert transport is not None
        self._cancel_timer()
        held = self.link.preconnect.take()
        backend = held.transport if held is not None else None
        early = False
        if backend is not None and 0 < len(first) <= wire.SMALL:
            backend.write(first)  # type: ignore[arg-type]  # a memoryview sends as well
            early = True
        self.busy = True
        self.link.taken(self)
        sp = Splice(self.link.loop, STREAM_IDLE, self.link.streams.discard)
        sp.backend = _Answering(sp, self.link.dial_missing)
        self.link.streams.add(sp)
        sp.client.half_close = False  # END closes the stream both ways
        self.stream = Stream(self.conn, transport, sp.client, self._stream_done)
        sp.client.connection_made(self.stream)  # type: ignore[arg-type]
        if early:
            sp.client.nbytes += len(first)
        elif first:
            sp.client.data_received(first)  # type: ignore[arg-type]  # waits in the splice
        if held is None or backend is None:
            self.link.spawn(self._connect(sp))
            return
        backend.set_protocol(sp.backend)
        sp.backend.connection_made(backend)  # type: ignore[arg-type]  # a look-alike
        for data in held.early:
            sp.backend.data_received(data)
        sp.link()
        self.link.loop.call_later(REFILL_WAIT, self.link.refill)

    def _stream_done(self) -> None:
        """END went both ways: idle again, for the gateway's next client."""
        self.stream = None
        self.busy = False
        self.link.preconnect.refill()
        self.link.returned(self)
        self._idle()

    async def _connect(self, sp: Splice) -> None:
        """Connect the backend; then the splice, or REFUSE with the reason.

        A refill this take may call for waits until the backend answers (``_Answering``),
        at most ``REFILL_WAIT``: replacements' TLS handshakes would otherwise compete for
        the CPU with this stream on both ends.
        """
        try:
            await self._connect_backend(sp)
        finally:
            self.link.loop.call_later(REFILL_WAIT, self.link.refill)

    async def _connect_backend(self, sp: Splice) -> None:
        transport = self.transport
        assert transport is not None
        to = self.link.settings.to
        loop = self.link.loop
        try:
            async with asyncio.timeout(self.link.settings.connect_timeout):
                sock = await connect_tcp(loop, to.host, to.port)
        except (OSError, TimeoutError) as e:
            reason = f"the node cannot connect to {to}: {getattr(e, 'strerror', None) or e}"
            log.warning("%s", reason)
            sp.cancel()
            self.link.streams.discard(sp)
            if not transport.is_closing():
                transport.write(self.conn.refuse(reason))
                transport.close()
            return
        if sp.client.closed:
            sock.close()
            sp.finish()
            return
        SocketTransport(self.link.readiness, sock).start(sp.backend, readable=False)
        sp.link()

    def shrink(self) -> None:
        """Close this idle connection: the link is quiet and keeps fewer."""
        self.park = True
        self._close()

    def _finish(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.lost(exc)
        if self.accepted:
            self.link.lost(self)
        self._finish(Outcome.PARKED if self.park else Outcome.LOST)


class GatewayLink:
    """The node's pool at one gateway: dials, idle connections, the streams they serve."""

    def __init__(self, settings: NodeSettings, gateway: Endpoint, ctx: ResumingContext,
                 session: bytes, streams: set[Splice], preconnect: Preconnect,
                 readiness: Readiness, liveness: wire.Liveness = wire.LIVENESS) -> None:
        self.settings = settings
        self.readiness = readiness
        self.preconnect = preconnect
        self.liveness = liveness
        self.gateway = gateway
        self.ctx = ctx
        self.session = session
        self.streams = streams
        self.loop = asyncio.get_running_loop()
        self.backoff = Backoff()
        self.healthy = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.pool = Pool(settings.pool, settings.low_water, settings.shrink_after,
                         last_take=self.loop.time())
        self.idle: set[NodeConn] = set()
        self.conns: set[NodeConn] = set()  # accepted and not closed: idle or busy

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def problem(self, what: str) -> None:
        # One warning when the link goes bad, not one per retry while it stays bad.
        level = logging.WARNING if self.healthy or self.backoff.failures == 0 else logging.DEBUG
        log.log(level, "gateway %s: %s", self.gateway, what)
        self.healthy = False

    def accepted(self, conn: NodeConn) -> None:
        self.backoff.reset()
        self.idle.add(conn)
        self.conns.add(conn)
        self.pool.accepted()
        if not self.healthy:
            log.info("gateway %s: tunnel for %s is up", self.gateway, self.settings.name)
        self.healthy = True

    def taken(self, conn: NodeConn) -> None:
        """The gateway opened ``conn``: dial now only if nothing is spare."""
        self.idle.discard(conn)
        self.pool.taken(self.loop.time())
        if self.pool.spare == 0:
            self.refill()

    def returned(self, conn: NodeConn) -> None:
        self.pool.returned()
        self.idle.add(conn)

    def lost(self, conn: NodeConn) -> None:
        """An accepted connection closed."""
        self.conns.discard(conn)
        if conn.busy:
            self.pool.lost_busy()
        elif conn in self.idle:
            self.idle.discard(conn)
            if self.pool.lost_idle(conn.park):
                self.spawn(self._dial(self.backoff.next()))

    def refill(self) -> None:
        """Dial what the pool lacks and make a spare backend connection (after a stream)."""
        self.dial_missing()
        self.preconnect.refill()

    def dial_missing(self) -> None:
        """Dial what the pool lacks (after a stream's first answer)."""
        for _ in range(self.pool.refill()):
            self.spawn(self._dial(0.0))

    async def run(self) -> None:
        for _ in range(self.settings.pool):
            self.spawn(self._dial(0.0))
        try:
            while True:
                await asyncio.sleep(self.settings.shrink_after / 4 or 3600)
                for conn in list(self.idle)[: self.pool.surplus(self.loop.time())]:
                    conn.shrink()
        finally:
            for task in list(self.tasks):
                task.cancel()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.abort()

    async def _dial(self, delay: float) -> None:
        """One connection into the pool: dial until accepted or turned away."""
        while True:
            if delay:
                log.debug("gateway %s: dialling again in %.2f s", self.gateway, delay)
                await asyncio.sleep(delay)
            outcome = await self._one()
            if outcome is Outcome.PARKED:
                self.pool.turned_away()
            if outcome is not Outcome.LOST:
                return
            delay = self.backoff.next()

    async def _one(self) -> Outcome:
        done: asyncio.Future[Outcome] = self.loop.create_future()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                tls = await self._connect()
        except ssl.SSLCertVerificationError as e:
            self.problem(f"its certificate does not verify, refused: {e.verify_message}")
            return Outcome.LOST
        except (OSError, TimeoutError, ssl.SSLError) as e:
            self.problem(f"cannot connect: {getattr(e, 'strerror', None) or e or 'timeout'}")
            return Outcome.LOST
        tls.start(NodeConn(self, done))
        try:
            return await done
        except asyncio.CancelledError:
            tls.abort()
            raise

    async def _connect(self) -> TlsSocket:
        """TCP to the gateway, then TLS on the socket itself (``proxy.tlssocket``: OpenSSL
        reads and writes the descriptor, on this process's own epoll), resuming the last
        session. Raises what the connect or the handshake raised."""
        g = self.gateway
        sock = await connect_tcp(self.loop, g.host, g.port)
        tls = TlsSocket(self.readiness, sock, self.ctx, server_hostname=self.settings.server_name,
                        session=self.ctx.session, bulk=True)
        shaken: asyncio.Future[None] = self.loop.create_future()

        def handshaken(e: BaseException | None) -> None:
            if not shaken.done():
                if e is None:
                    shaken.set_result(None)
                else:
                    shaken.set_exception(e)

        tls.handshake(self.settings.connect_timeout, handshaken)
        try:
            await shaken
        except asyncio.CancelledError:
            tls.abort()
            raise
        return tls


async def run_node(settings: NodeSettings, liveness: wire.Liveness = wire.LIVENESS) -> None:
    """Serve ``settings.name`` through every gateway until cancelled."""
    session = os.urandom(wire.SESSION_BYTES)
    streams: set[Splice] = set()
    readiness = Readiness(asyncio.get_running_loop())
    preconnect = Preconnect(settings.to, settings.preconnect, settings.connect_timeout,
                            readiness)
    links = [GatewayLink(settings, g, client_context(settings), session, streams, preconnect,
                         readiness, liveness)
             for g in settings.gateways]
    log.info("tunnel for %s to %s via %s", settings.name, settings.to,
             ", ".join(str(g) for g in settings.gateways))
    try:
        async with asyncio.TaskGroup() as tg:
            for link in links:
                tg.create_task(link.run())
    finally:
        preconnect.close()
        for sp in list(streams):
            sp.abort()
        readiness.close()
