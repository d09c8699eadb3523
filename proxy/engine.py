"""What every listener of the proxy shares: routes, backends, limits, metrics, live pairs.

Two limits bound what clients can make the proxy hold: ``max_connections`` for the
process, ``max_connections_per_name`` for the spliced pairs of any one name, so one
name (looping back at us by mistake, or simply popular) cannot exhaust the descriptors
the others need. Every backend connect is judged by the backend policy first, so the
proxy never dials where the policy forbids, whatever the store holds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from proxy.accesslog import AccessLog
from proxy.balancer import Balancer
from proxy.connector import Connector, TcpConnector
from proxy.deadlines import Deadlines
from proxy.metrics import CATCH_ALL, ProxyMetrics
from proxy.proxyproto import header
from proxy.readiness import Readiness
from proxy.routes import Route, RouteTable
from proxy.sockettransport import SocketTransport
from proxy.splice import PairState, Splice
from tunnel.gateway import Tunnels
from webgateway.addresses import HostPort
from webgateway.backend_policy import BackendPolicy, Refusal
from webgateway.model import Name, TlsMode

log = logging.getLogger(__name__)

_REFUSAL_LOG_EVERY = 60.0


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    max_connections: int = 10000
    max_connections_per_name: int = 1000


class Engine:
    def __init__(
        self,
        table: RouteTable,
        limits: Limits,
        registry: CollectorRegistry,
        connector: Connector | None = None,
        policy: BackendPolicy | None = None,
        access_log: AccessLog | None = None,
        catch_all: HostPort | None = None,
    ) -> None:
        self.table = table
        self.limits = limits
        self.policy = policy or BackendPolicy()
        self.balancer = Balancer()
        self.connector: Connector = connector or TcpConnector()
        #: node connections of tunnel names (set by the service once the loop runs)
        self.tunnels: Tunnels | None = None
        #: in a worker process: gives a tunnel connection to the main process, which
        #: holds the tunnels; False when it could not (``proxy.handoff.Sender.send``)
        self.hand_off: Callable[[socket.socket, tuple[str, int], float], bool] | None = None
        self.per_name: dict[str, int] = {}  # label -> spliced pairs open for it
        self.metrics = ProxyMetrics(registry, table, self)
        self.metrics.open.set_function(lambda: self.count)
        self.access_log = access_log
        #: where connections for no known name go, untouched (``[proxy] catch_all``)
        self.catch_all = (Route("", Name(CATCH_ALL, 0, (catch_all,), TlsMode.PASSTHROUGH))
                          if catch_all is not None else None)
        self.count = 0  # connections from accept to close (peeking ones included)
        #: open pairs (``Splice`` or the flat ``Pair``): close_all aborts them
        self.splices: set[PairState] = set()
        self._refusal_logged: dict[str, float] = {}  # label -> when we last said so
        self.tasks: set[asyncio.Task[None]] = set()
        #: sockets not (yet) owned by a transport -> how to close them at shutdown
        self.loose: dict[object, Callable[[], None]] = {}
        self._readiness: Readiness | None = None
        self._deadlines: Deadlines | None = None

    def readiness(self) -> Readiness:
        """The epoll of this process's connection sockets (made in the running loop)."""
        if self._readiness is None:
            self._readiness = Readiness(asyncio.get_running_loop())
        return self._readiness

    def deadlines(self) -> Deadlines:
        """The timeouts of this process's pairs (made in the running loop)."""
        if self._deadlines is None:
            self._deadlines = Deadlines(asyncio.get_running_loop())
        return self._deadlines

    # -- accounting
    def outcome(self, what: str) -> None:
        self.metrics.outcome(what)

    def finish(self, outcome: str, client: tuple[str, int], started: float, *,
               sni: str | None = None, route: str | None = None, mode: str | None = None,
               backend: HostPort | None = None, bytes_in: int = 0, bytes_out: int = 0,
               reason: str | None = None) -> None:
        """Account for one HTTPS connection that ended: its outcome and access-log line."""
        self.metrics.outcome(outcome)
        if reason is not None and outcome == "handshake_failed":
            self.metrics.handshake_failures.labels(reason).inc()
        if self.access_log is not None:
            self.access_log.record(
                client=client, sni=sni, route=route, mode=mode, backend=backend,
                bytes_in=bytes_in, bytes_out=bytes_out,
                duration=asyncio.get_running_loop().time() - started, outcome=outcome,
                reason=reason)

    def http_done(self, outcome: str, client: tuple[str, int], started: float, *,
                  host: str | None, route: str | None, bytes_in: int, bytes_out: int) -> None:
        """Account for one port-80 connection that ended: the same line, ``mode`` "http"."""
        self.metrics.http.labels(outcome).inc()
        if self.access_log is not None:
            self.access_log.record(
                client=client, sni=None, route=route, mode="http", backend=None,
                bytes_in=bytes_in, bytes_out=bytes_out,
                duration=asyncio.get_running_loop().time() - started, outcome=outcome,
                reason=None, host=host)

    def opened(self) -> bool:
        """Count a new client; False when the limit is reached (caller closes it)."""
        if self.count >= self.limits.max_connections:
            return False
        self.count += 1
        return True

    def closed(self) -> None:
        self.count -= 1

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def new_splice(self, client: tuple[str, int], started: float, sni: str | None,
                   route: str | None, mode: str) -> Splice:
        """A pair for one client; the rest is what its access-log line will say."""
        sp = Splice(asyncio.get_running_loop(), self.limits.idle_timeout, self.pair_done)
        sp.client_addr, sp.started, sp.sni, sp.route, sp.mode = client, started, sni, route, mode
        self.splices.add(sp)
        return sp

    def claim(self, sp: PairState, route: Route) -> bool:
        """Count ``sp`` against its name's cap; False when the name is at its cap."""
        label = route.name.label
        n = self.per_name.get(label, 0)
        if n >= self.limits.max_connections_per_name:
            return False
        self.per_name[label] = n + 1
        sp.label = label
        return True

    def _unclaim(self, sp: PairState) -> None:
        label, sp.label = sp.label, None
        if label is not None:
            n = self.per_name.pop(label) - 1
            if n:
                self.per_name[label] = n

    def forget(self, sp: Splice) -> None:
        """Drop a splice that never carried a connection (the caller closes the client)."""
        sp.cancel()
        self.splices.discard(sp)
        self._unclaim(sp)

    def pair_done(self, sp: PairState) -> None:
        """Account for a pair that is done (its sockets closed): once, from the pair."""
        self.splices.discard(sp)
        label = sp.label
        self._unclaim(sp)
        if sp.backend_addr is not None:
            self.balancer.release(sp.backend_addr)
        if sp.release is not None:
            sp.release()
        self.closed()
        bytes_in, bytes_out = sp.carried()
        if sp.linked and label is not None:
            done_in, done_out = sp.counted
            self.metrics.name_done(label, bytes_in - done_in, bytes_out - done_out)
        self.finish(sp.outcome, sp.client_addr, sp.started, sni=sp.sni, route=sp.route,
                    mode=sp.mode, backend=sp.backend_addr, bytes_in=bytes_in,
                    bytes_out=bytes_out, reason=sp.reason)

    def count_traffic(self) -> None:
        """Add what open pairs carried since the last call to their names' byte series,
        so a long download or a WebSocket shows up while it lasts, not only at its end."""
        for sp in self.splices:
            label = sp.label
            if sp.linked and label is not None:
                now = sp.carried()
                done_in, done_out = sp.counted
                if now != sp.counted:
                    self.metrics.name_traffic(label, now[0] - done_in, now[1] - done_out)
                    sp.counted = now

    # -- backends
    def connect_backend(
        self, route: Route, sp: Splice, client: tuple[str, int],
        local: Callable[[], tuple[str, int]], done: Callable[[bool], None],
    ) -> None:
        """For a passthrough splice (a terminated connection is a ``proxy.pair.Pair``): a
        tunnel stream for a tunnel name, else the backends in balancer order; then
        ``done(True)`` with ``sp.backend`` connected, or ``done(False)``.
        ``local`` gives the address the client reached (asked only for a PROXY header).

        On failure ``sp.outcome`` says why: a connect failed (``backend_unreachable``),
        the policy refused every backend (``backend_refused``), or the client left. A
        tunnel stream is writable before the node has reached its backend; if it then
        cannot, the stream is lost with nothing received (a clean close). A TCP connect
        is callbacks only (``Dial``); a tunnel stream on a connection pooled now is too,
        and OPEN carries the client's bytes read so far (and the PROXY
        header): one write; waiting for a connection takes a task.
        """
        if route.name.tunnel and self.tunnels is not None:
            refused = self._node_refused(route, sp)
            first = sp.client.pending
            if route.name.proxy_protocol:
                first = [header(client, local()), *first]
            opened = self.tunnels.open_now(route.name.label, lambda: sp.backend, refused, first)
            if opened is not None:
                sp.client.pending = []  # sent with OPEN
                self._tunnel_opened(sp, done, opened[0], opened[2])
            else:
                self.spawn(self._tunnel_stream(route, sp, client, local, done, refused))
            return
        Dial(self, route, sp, client, local, done).next()

    def _node_refused(self, route: Route, sp: Splice) -> Callable[[str], None]:
        def node_refused(reason: str) -> None:
            self.node_refused(route, reason)
            sp.outcome = "backend_unreachable"
        return node_refused

    def node_refused(self, route: Route, reason: str) -> None:
        """A node refused a stream (its backend is down), or its connection closed first."""
        log.debug("tunnel stream for %s: %s", route.name.label, reason)
        self.metrics.backend_failures.labels("refused").inc()

    async def _tunnel_stream(
        self, route: Route, sp: Splice, client: tuple[str, int],
        local: Callable[[], tuple[str, int]], done: Callable[[bool], None],
        refused: Callable[[str], None],
    ) -> None:
        """No connection pooled now: wait for one (``Tunnels.open``), else the backends."""
        assert self.tunnels is not None
        try:
            transport, _, release = await self.tunnels.open(
                route.name.label, lambda: sp.backend, self.limits.connect_timeout, refused)
        except (OSError, TimeoutError) as e:
            log.debug("no tunnel stream for %s: %s", route.name.label, e or "timeout")
            Dial(self, route, sp, client, local, done, failed=True).next()
            return
        if route.name.proxy_protocol and not sp.client.closed:
            transport.write(header(client, local()))
        self._tunnel_opened(sp, done, transport, release)

    def _tunnel_opened(self, sp: Splice, done: Callable[[bool], None],
                       transport: asyncio.Transport, release: Callable[[], None]) -> None:
        if sp.client.closed:  # left while the stream opened: give it back now
            transport.close()
            release()
            sp.outcome = "client_closed"
            done(False)
            return
        sp.release = release
        sp.backend.half_close = False  # a TLS stream: no half-close
        done(True)

    def refused(self, route: Route, refusal: Refusal) -> None:
        """Count a refused backend; say so once a minute per name, not once per client."""
        self.metrics.backend_failures.labels("policy").inc()
        label = route.name.label
        now = time.monotonic()
        if now - self._refusal_logged.get(label, -_REFUSAL_LOG_EVERY) < _REFUSAL_LOG_EVERY:
            return
        if len(self._refusal_logged) >= 10_000:
            self._refusal_logged.clear()
        self._refusal_logged[label] = now
        log.warning("name %s: not connecting to a backend the policy refuses (%s): %s",
                    label, refusal.rule, refusal.detail)

    def backend_failed(self, route: Route, b: HostPort, exc: BaseException | None) -> None:
        """Count a failed backend connect, mark the backend down for the balancer, and say
        so once when it goes down, not once per client while it stays down."""
        failures = self.balancer.failed(b)
        self.metrics.backend_failures.labels(_connect_failure(exc)).inc()
        log.log(logging.INFO if failures == 1 else logging.DEBUG,
                "backend %s of %s failed: %s", b, route.name.label, exc or "timeout")

    def close_all(self) -> None:
        for close in list(self.loose.values()):
            close()
        for task in list(self.tasks):
            task.cancel()
        if self.tunnels is not None:
            self.tunnels.close_all()
        for sp in list(self.splices):
            sp.abort()
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None


def _connect_failure(e: BaseException | None) -> str:
    """The ``reason`` label of a failed backend connect."""
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return "unreachable"


class Dial:
    """One client's walk over its route's backends, best first, until one connects; a
    pending connect sits in ``engine.loose`` (shutdown cancels it)."""

    __slots__ = ("backend", "client", "done", "engine", "failed", "i", "local", "order",
                 "refused", "route", "sp")

    def __init__(self, engine: Engine, route: Route, sp: Splice, client: tuple[str, int],
                 local: Callable[[], tuple[str, int]], done: Callable[[bool], None],
                 failed: bool = False) -> None:
        self.engine, self.route, self.sp, self.client = engine, route, sp, client
        self.local, self.done = local, done
        self.order = engine.balancer.order(route.backends)
        self.i = 0
        self.refused, self.failed = False, failed
        self.backend: HostPort | None = None

    def next(self) -> None:
        engine, sp = self.engine, self.sp
        while self.i < len(self.order):
            b = self.order[self.i]
            self.i += 1
            if sp.client.closed:
                sp.outcome = "client_closed"
                self.done(False)
                return
            refusal = engine.policy.judge(b)
            if refusal is not None:
                engine.refused(self.route, refusal)
                self.refused = True
                continue
            self.backend = b
            engine.loose[self] = engine.connector.connect(
                engine.readiness(), b, sp.backend, engine.limits.connect_timeout,
                self._connected)
            return
        sp.outcome = ("backend_refused" if self.refused and not self.failed
                      else "backend_unreachable")
        self.done(False)

    def _connected(self, transport: SocketTransport | None,
                   exc: BaseException | None) -> None:
        engine, sp, b = self.engine, self.sp, self.backend
        assert b is not None
        engine.loose.pop(self, None)
        if transport is None:
            engine.backend_failed(self.route, b, exc)
            self.failed = True
            self.next()
            return
        if sp.client.closed:
            transport.close()
            sp.outcome = "client_closed"
            self.done(False)
            return
        engine.balancer.acquire(b)
        sp.backend_addr = b
        if self.route.name.proxy_protocol:
            transport.write(header(self.client, self.local()))
        self.done(True)
