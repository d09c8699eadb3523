"""One backend connection made ahead of the next stream, as a browser's preconnect does.

With connections pooled and reused, what is left on a new stream's first-byte path at the
node is its connect to ``--to`` (three turns of the event loop after OPEN arrives, while
the client's request waits: most of the node's share). So while streams come, the node
keeps one spare connection to the backend; the next OPEN takes it and the request goes
straight through, and a new spare is made once that stream is over (or `tunnel.node.REFILL_WAIT`
after it began, for a long one).

A spare is kept at most ``keep`` seconds unused (2 by default: far below the idle limits
servers put on a connection that has not sent a request yet, nginx 60 s, Apache 20 s,
Node.js 60 s), so a quiet node holds none, and one the backend closed meanwhile is never
handed out (its close is seen and it is dropped: that stream connects afresh).

The spare is made once per stream, so its connect is the proxy's own (``Connect``: a
non-blocking connect on the node's epoll, callbacks only) when ``--to`` is an address:
a task, a timeout scope and uvloop's ``sock_connect`` (which asks its thread pool to
resolve even an address) cost the node more CPU than the rest of the stream (measured
in bench/README.md). A name is resolved at each connect, as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Final

from proxy.readiness import Readiness
from proxy.sockettransport import Connect, SocketTransport
from proxy.splice import PENDING_LIMIT
from tunnel.connect import connect_tcp
from tunnel.settings import Endpoint
from webgateway.addresses import HostPort

log = logging.getLogger(__name__)

#: Seconds a spare backend connection is kept unused, by default.
KEEP: Final = 2.0


class Held(asyncio.Protocol):
    """A spare's protocol until a stream takes it: keeps what a server-first backend says."""

    __slots__ = ("early", "gone", "transport")

    def __init__(self) -> None:
        self.transport: SocketTransport | None = None
        self.early: list[bytes] = []
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a SocketTransport

    def data_received(self, data: bytes) -> None:
        self.early.append(data)
        if sum(map(len, self.early)) > PENDING_LIMIT:
            self.close()

    def eof_received(self) -> bool:
        self.gone = True
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True

    def close(self) -> None:
        self.gone = True
        if self.transport is not None:
            self.transport.close()


class Preconnect:
    """At most one spare connection to ``to``, at most ``keep`` seconds old (0: none)."""

    def __init__(self, to: Endpoint, keep: float, connect_timeout: float,
                 readiness: Readiness) -> None:
        self.to = to
        self.readiness = readiness
        self.keep = keep
        self.connect_timeout = connect_timeout
        self.loop = asyncio.get_running_loop()
        #: ``to`` when it is an address (connected with callbacks), else None (resolved)
        self.address = (HostPort(ipaddress.ip_address(to.host), to.port) if to.is_ip
                        else None)
        self.spare: Held | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.dial: Connect | None = None
        self.dialled: Held | None = None  # the protocol of ``dial``
    def take(self) -> Held | None:
        """The spare, if it is still open (then none until ``refill``)."""
        held, self.spare = self.spare, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if held is None or held.gone:
            return None
        return held

    def refill(self) -> None:
        """Make a spare, unless there is one or one is on its way."""
        if (self.keep <= 0 or self.spare is not None or self.dial is not None
                or self.task is not None):
            return
        if self.address is None:
            self.task = self.loop.create_task(self._resolve())
            return
        self.dialled = Held()
        self.dial = Connect(self.readiness, self.address, self.dialled, self.connect_timeout,
                            self._connected)

    def _connected(self, transport: SocketTransport | None, e: BaseException | None) -> None:
        held, self.dialled, self.dial = self.dialled, None, None
        if transport is None or held is None:
            log.debug("spare connection to %s: %s", self.to, e)  # the stream will say it
            return
        self._keep(held)

    async def _resolve(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                sock = await connect_tcp(self.loop, self.to.host, self.to.port)
        except (OSError, TimeoutError) as e:
            log.debug("spare connection to %s: %s", self.to, e)  # the stream will say it
            return
        finally:
            self.task = None
        held = Held()
        SocketTransport(self.readiness, sock).start(held, readable=False)
        self._keep(held)

    def _keep(self, held: Held) -> None:
        self.spare = held
        self.timer = self.loop.call_later(self.keep, self._expire)

    def _expire(self) -> None:
        self.timer = None
        held, self.spare = self.spare, None
        if held is not None:
            held.close()

    def close(self) -> None:
        if self.dial is not None:
            self.dial.cancel()
            self.dial = self.dialled = None
        if self.task is not None:
            self.task.cancel()
        if self.timer is not None:
            self.timer.cancel()
        self._expire()
