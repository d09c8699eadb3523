"""The gateway's side of the tunnels: authenticate node connections, pool them, hand them out.

A node's TLS connection arrives on the proxy's :443 (the proxy picked it out by ALPN and
terminated TLS with the zone certificate). ``TunnelConn`` speaks ``tunnel.wire`` on it;
once the HELLO's token matches the name's hash in the proxy's in-memory view, the
connection waits in ``Tunnels``' pool for that name. ``Tunnels.open`` is what the proxy
calls instead of dialling a backend: it takes an idle connection (from the node with the
fewest streams in use), sends OPEN and gives the caller's protocol a ``tunnel.stream``
transport at once, so the client's first bytes follow OPEN without waiting for the node
(the round trip through two event loops was most of a new stream's extra first-byte
time). ``TunnelConn`` keeps reading the connection and hands the stream its DATA; a
REFUSE, or a close before the node's first DATA, reaches the caller's ``refused``
callback (no response byte has passed yet, so the proxy can still send its 502 page).
When END has gone both ways the connection goes back to the pool for the next client.

Failures are cheap and bounded: a refused HELLO costs one frame and a close, a failing
address is throttled (``FailureLimiter``) and logged once per window, pools and waiters
have caps, and every connection that has not reached the pool has a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar, cast

from tunnel import wire
from tunnel.stream import Carrier, Stream
from webgateway.model import Name
from webgateway.ratelimit import FailureLimiter
from webgateway.tokens import hash_token

log = logging.getLogger(__name__)

P = TypeVar("P", bound=asyncio.Protocol)



@dataclass(frozen=True)
class PoolLimits:
    """What one gateway process lets the nodes and the clients of a tunnel name hold.

    ``[proxy] tunnel_*`` in the config (``webgateway.config.ProxyConfig``); the defaults:
    64 idle connections per name is 8 nodes with the default pool of 8 (or 4 of 16), about
    1.5 MiB of the gateway's memory at the most; 1024 waiting clients matches
    ``max_connections_per_name``'s order, each costs a future and a timer, and waits at
    most ``connect_timeout``; 20 failed HELLOs a minute lets a node with a stale token
    retry (its back-off reaches 30 s) and stops a token guesser after 20 tries.
    """

    max_idle_per_name: int = 64
    max_waiters_per_name: int = 1024
    failures_per_minute: int = 20


Refused = Callable[[str], None]
#: Why a pooled connection is dropped when its name's token no longer holds.
NO_LONGER_VALID: Final = "the tunnel token was rotated or the name removed"


class TunnelConn(Carrier):
    """One node connection on the gateway, from HELLO until it is handed out or closed.

    Slotted, and without a timer of its own once pooled (``Tunnels`` sweeps them all):
    a gateway holds thousands of these idle.
    """

    __slots__ = ("conn", "hello_timeout", "hub", "label", "last_ping", "on_gone", "peer",
                 "pooled", "refused", "session", "stream", "timer", "token_hash",
                 "transport")

    def __init__(self, hub: Tunnels, peer: str, on_gone: Callable[[], None],
                 hello_timeout: float) -> None:
        self.hub = hub
        self.peer = peer
        self.on_gone = on_gone  # releases the proxy's connection count, exactly once
        self.conn = wire.Connection(wire.Role.GATEWAY)
        self.transport: asyncio.Transport | None = None
        self.label = ""
        self.session = b""
        self.token_hash = ""
        self.last_ping = 0.0
        #: the stream in progress, from OPEN until END both ways; ``refused`` says the node
        #: would not (or could not) open it, until its first DATA
        self.stream: Stream | None = None
        self.refused: Refused | None = None
        self.pooled = False  # counted in its session's ``attached``
        self.timer: asyncio.TimerHandle | None = None
        self.hello_timeout = hello_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.hub.live.add(self)
        self.timer = self.hub.loop.call_later(self.hello_timeout, self._hello_timeout)

    def _hello_timeout(self) -> None:
        self.timer = None
        if self.conn.state is wire.State.HELLO:
            self.hub.failed(self.peer, "no HELLO in time")
            self._refuse("no HELLO in time")

    def received(self, data: bytes) -> None:
        try:
            events = self.conn.receive(data)
        except wire.ProtocolError as e:
            if self.label:
                log.info("tunnel %s from %s broke the protocol: %s", self.label, self.peer, e)
            else:
                self.hub.failed(self.peer, str(e))
            self._refuse(str(e))
            return
        for ev in events:
            if self.stream_event(ev):
                continue
            if isinstance(ev, wire.Hello):
                self._hello(ev)
            elif ev is wire.PING:
                self._ping()
            elif isinstance(ev, wire.Refused):
                self._refused(f"the node refused: {ev.reason}")
                self._close()

    def passed(self, stream: Stream, data: bytes) -> None:
        self.refused = None  # the node answered: its backend is there
        stream.protocol.data_received(data)

    def _refused(self, reason: str) -> None:
        refused, self.refused = self.refused, None
        if refused is not None:
            refused(reason)

    def eof_received(self) -> bool | None:
        return None  # a TLS transport closes on EOF: connection_lost follows

    def _hello(self, hello: wire.Hello) -> None:
        reason = self.hub.authenticate(self, hello)
        if reason is not None:
            self.hub.failed(self.peer, reason)
            self._refuse(reason)
            return
        full = self.hub.full(hello.label)
        if full is not None:  # a node with a larger pool than we keep: not a failure
            log.debug("tunnel %s from %s: %s", hello.label, self.peer, full)
            self._write(self.conn.full())
            self._close()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._write(self.conn.accept())
        self.last_ping = self.hub.loop.time()
        self.hub.pool(self)

    def check(self, now: float) -> None:
        """Drop this connection if it is idle and silent, or its token no longer holds."""
        if self.conn.state is not wire.State.IDLE:
            return
        if now - self.last_ping > self.hub.liveness.dead_after:
            log.info("tunnel %s from %s: silent for %.0f s, dropped", self.label, self.peer,
                     self.hub.liveness.dead_after)
            self._close()
        elif not self.hub.still_valid(self):
            self._refuse(NO_LONGER_VALID)

    def _ping(self) -> None:
        self.last_ping = self.hub.loop.time()
        if self.conn.state is wire.State.IDLE:
            self._write(self.conn.pong())

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _refuse(self, reason: str) -> None:
        self._write(self.conn.refuse(reason))
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.hub.unpool(self)
        stream, self.stream = self.stream, None
        if stream is not None:
            self._refused("the tunnel connection closed before the node answered")
            stream.lost(exc)
        self.gone()

    def gone(self) -> None:
        self.hub.live.discard(self)
        on_gone, self.on_gone = self.on_gone, _nothing
        on_gone()

    def start_open(self, protocol: asyncio.Protocol, refused: Refused | None,
                   first: Sequence[bytes] = ()) -> Stream:
        """Send OPEN with ``first`` (see ``Tunnels.open_now``) and give ``protocol`` the
        stream (it may write at once)."""
        transport = self.transport
        assert transport is not None
        self.refused = refused
        transport.write(self.conn.open(first))
        self.stream = stream = Stream(self.conn, transport, protocol, self._stream_done)
        protocol.connection_made(stream)  # type: ignore[arg-type]
        return stream

    def _stream_done(self) -> None:
        """END went both ways: the connection waits for the next client (or closes)."""
        self.stream, self.refused = None, None
        self.last_ping = self.hub.loop.time()
        self.hub.repool(self)


def _nothing() -> None:
    return None


@dataclass
class _Session:
    """One node process's connections for one name."""

    idle: collections.deque[TunnelConn] = field(default_factory=collections.deque)
    attached: int = 0  # authenticated and not yet closed or handed out
    active: int = 0  # handed out to clients, not yet released
    served: int = 0  # streams so far: ties go to the least used node
    since: float = field(default_factory=time.time)  # wall clock: shown to the operator


class Tunnels:
    """Per name: node sessions and their idle connections; ``open`` hands one out."""

    def __init__(self, lookup: Callable[[str], Name | None],
                 limits: PoolLimits = PoolLimits(),
                 liveness: wire.Liveness = wire.LIVENESS,
                 on_presence: Callable[[str, bool], None] | None = None) -> None:
        """``on_presence(label, held)``: a name got its first node session here, or lost
        its last (the fleet records it: ``webgateway.fleet.TunnelPresence``)."""
        self.loop = asyncio.get_running_loop()
        self.on_presence = on_presence
        self.liveness = liveness
        self.lookup = lookup
        self.limits = limits
        self.limiter = FailureLimiter(limits.failures_per_minute)
        self.sessions: dict[str, dict[bytes, _Session]] = {}
        self.waiters: dict[str, collections.deque[asyncio.Future[TunnelConn]]] = {}
        self.idle_count: dict[str, int] = {}
        self.live: set[TunnelConn] = set()  # every node connection
        self._sweeper = self.loop.call_later(liveness.check_every, self._sweep)

    def _sweep(self) -> None:
        """Every ``check_every``: the liveness and token checks of every idle connection."""
        now = self.loop.time()
        for tc in list(self.live):
            tc.check(now)
        self._sweeper = self.loop.call_later(self.liveness.check_every, self._sweep)

    # ------------------------------------------------------------------ admission
    def throttled(self, peer: str) -> bool:
        """True when ``peer`` failed too often lately: refuse it before the TLS handshake."""
        return self.limiter.retry_after(peer) > 0

    def failed(self, peer: str, reason: str) -> None:
        # One line per address until it is throttled, then silence until the window passes.
        if not self.throttled(peer):
            log.warning("tunnel connection from %s refused: %s", peer, reason)
        self.limiter.failed(peer)

    def authenticate(self, tc: TunnelConn, hello: wire.Hello) -> str | None:
        """None when the HELLO may join the pool, else the reason (sent to the node)."""
        name = self.lookup(hello.label)
        # One answer for "no such name", "not a tunnel name" and "wrong token", so a
        # token guesser learns nothing about which names exist.
        if name is None or not name.tunnel or not name.tunnel_token_hash or not hmac.compare_digest(
            hash_token(hello.token), name.tunnel_token_hash
        ):
            return f"the token is not valid for {hello.label!r}"
        tc.label, tc.session, tc.token_hash = hello.label, hello.session, name.tunnel_token_hash
        return None

    def full(self, label: str) -> str | None:
        """Why ``label``'s pool takes no more idle connections, or None."""
        most = self.limits.max_idle_per_name
        if self.idle_count.get(label, 0) >= most:
            return f"{label!r} has {most} idle connections already"
        return None

    def still_valid(self, tc: TunnelConn) -> bool:
        name = self.lookup(tc.label)
        return name is not None and name.tunnel and name.tunnel_token_hash == tc.token_hash

    # ------------------------------------------------------------------ the pool
    def _session(self, tc: TunnelConn) -> _Session:
        return self.sessions.setdefault(tc.label, {}).setdefault(tc.session, _Session())

    def repool(self, tc: TunnelConn) -> None:
        """``tc`` served its stream: back in the pool, unless it may no longer be there."""
        if tc.transport is None or tc.transport.is_closing():
            return
        if not self.still_valid(tc):
            tc._refuse(NO_LONGER_VALID)
        elif self.full(tc.label) is not None:
            tc._write(tc.conn.full())
            tc._close()
        else:
            self.pool(tc)

    def pool(self, tc: TunnelConn) -> None:
        first = tc.label not in self.sessions
        self._session(tc).attached += 1
        if first and self.on_presence is not None:
            self.on_presence(tc.label, True)
        tc.pooled = True
        self._offer(tc)

    def _offer(self, tc: TunnelConn) -> None:
        """Give a pooled connection to the first waiting client, or put it in the pool."""
        s = self._session(tc)
        waiters = self.waiters.get(tc.label)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(tc)
                return
        s.idle.append(tc)
        self.idle_count[tc.label] = self.idle_count.get(tc.label, 0) + 1

    def unpool(self, tc: TunnelConn) -> None:
        """``tc`` closed or was handed out: it leaves its session."""
        if not tc.pooled:
            return
        tc.pooled = False
        s = self.sessions[tc.label][tc.session]
        if tc in s.idle:
            s.idle.remove(tc)
            self.idle_count[tc.label] -= 1
        s.attached -= 1
        self._prune(tc.label, tc.session)

    def _prune(self, label: str, session: bytes) -> None:
        sessions = self.sessions.get(label)
        if not sessions:
            return
        s = sessions.get(session)
        if s is not None and s.attached <= 0 and s.active <= 0:
            del sessions[session]
        if not sessions:
            del self.sessions[label]
            self.idle_count.pop(label, None)
            if self.on_presence is not None:
                self.on_presence(label, False)
            for fut in self.waiters.pop(label, ()):
                if not fut.done():
                    fut.set_exception(ConnectionRefusedError("no tunnel connected"))

    def connected(self, label: str) -> int:
        """How many node sessions are connected for ``label``."""
        return len(self.sessions.get(label, ()))

    def nodes(self) -> dict[str, tuple[int, float]]:
        """Per name with a node: (node sessions connected, the oldest one's start, Unix time)."""
        return {label: (len(s), min(x.since for x in s.values()))
                for label, s in self.sessions.items() if s}

    def connections(self) -> int:
        """Node connections authenticated and not serving a stream."""
        return sum(x.attached for s in self.sessions.values() for x in s.values())

    def _take(self, label: str) -> TunnelConn | None:
        sessions = self.sessions.get(label)
        if not sessions:
            return None
        best: _Session | None = None
        for s in sessions.values():  # the least busy node, then the least used
            if s.idle and (best is None or (s.active, s.served) < (best.active, best.served)):
                best = s
        if best is None:
            return None
        best.served += 1
        self.idle_count[label] -= 1
        return best.idle.popleft()

    async def open(self, label: str, protocol_factory: Callable[[], P], timeout: float,  # noqa: ASYNC109
                   refused: Refused | None = None,
                   ) -> tuple[asyncio.Transport, P, Callable[[], None]]:
        """A stream to one of ``label``'s nodes, driving a new protocol; writable at once.

        Returns the transport, the protocol and a release callback (call it once the
        stream is done). Raises ``ConnectionRefusedError`` when no node is connected (at
        once: no waiting on a dead name) and ``TimeoutError`` when no pooled connection
        frees up in time. ``refused(reason)`` is called if the node refuses the stream
        or its connection closes before the node opened it; the protocol then sees the
        connection lost, having received nothing.
        """
        async with asyncio.timeout(timeout):
            while True:
                opened = self.open_now(label, protocol_factory, refused)
                if opened is not None:
                    return opened
                opened = self._hand_over(await self._wait(label), protocol_factory, refused,
                                         ())
                if opened is not None:
                    return opened

    def open_now(self, label: str, protocol_factory: Callable[[], P],
                 refused: Refused | None = None, first: Sequence[bytes] = (),
                 ) -> tuple[asyncio.Transport, P, Callable[[], None]] | None:
        """``open`` on a connection pooled now, else None: the common case takes no task
        and no turn of the loop before the client's bytes go to the node. ``first``: the
        client's bytes read so far, sent with OPEN in one write (the node forwards them
        before it sets up the rest of the stream); the caller no longer sends them."""
        while (tc := self._take(label)) is not None:
            if not self.still_valid(tc):
                tc._refuse(NO_LONGER_VALID)
                continue
            opened = self._hand_over(tc, protocol_factory, refused, first)
            if opened is not None:
                return opened
        return None

    async def _wait(self, label: str) -> TunnelConn:
        """The next connection a node of ``label`` pools (none now, but a node is there)."""
        if not self.sessions.get(label):
            raise ConnectionRefusedError("no tunnel connected")
        waiters = self.waiters.setdefault(label, collections.deque())
        if len(waiters) >= self.limits.max_waiters_per_name:
            raise ConnectionRefusedError("too many clients waiting for a tunnel")
        fut: asyncio.Future[TunnelConn] = self.loop.create_future()
        waiters.append(fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._offer(fut.result())  # handed to us as we gave up
            raise
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(fut)

    def _hand_over(self, tc: TunnelConn, protocol_factory: Callable[[], P],
                   refused: Refused | None, first: Sequence[bytes],
                   ) -> tuple[asyncio.Transport, P, Callable[[], None]] | None:
        """OPEN on ``tc`` for a new protocol; None when ``tc`` turned out to be closing.
        OPEN goes out first, the accounting after it."""
        transport = tc.transport
        assert transport is not None
        if transport.is_closing():
            self.unpool(tc)
            return None  # its connection_lost is on the way: the next one, at once
        protocol = protocol_factory()
        stream = tc.start_open(protocol, refused, first)
        self.unpool(tc)
        s = self._session(tc)
        s.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                s.active -= 1
                self._prune(tc.label, tc.session)

        return stream, protocol, release  # type: ignore[return-value]

    def close_all(self) -> None:
        self._sweeper.cancel()
        for tc in list(self.live):
            if tc.transport is not None:
                tc.transport.abort()
