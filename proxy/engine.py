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
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from proxy.balancer import Balancer
from proxy.connector import Connector, TcpConnector
from proxy.proxyproto import header
from proxy.routes import Route, RouteTable
from proxy.splice import Splice
from webgateway.backend_policy import BackendPolicy, Refusal

log = logging.getLogger(__name__)

_REFUSAL_LOG_EVERY = 60.0


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    max_connections: int = 10000
    max_connections_per_name: int = 1000


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Counter(
            "proxy_connections", "Client connections by outcome", ["outcome"], registry=registry
        )
        self.active = Gauge("proxy_active_connections", "Open client connections",
                            registry=registry)
        self.backend_failures = Counter(
            "proxy_backend_connect_failures", "Failed connects to a backend", registry=registry
        )
        self.backend_refused = Counter(
            "proxy_backend_refused", "Backend connects the backend policy refused",
            registry=registry,
        )


class Engine:
    def __init__(
        self,
        table: RouteTable,
        limits: Limits,
        registry: CollectorRegistry,
        connector: Connector | None = None,
        policy: BackendPolicy | None = None,
    ) -> None:
        self.table = table
        self.limits = limits
        self.policy = policy or BackendPolicy()
        self.balancer = Balancer()
        self.connector: Connector = connector or TcpConnector()
        self.metrics = Metrics(registry)
        self.count = 0  # connections from accept to close (peeking ones included)
        self.splices: set[Splice] = set()
        self.per_name: dict[str, int] = {}  # label -> spliced pairs open for it
        self._refusal_logged: dict[str, float] = {}  # label -> when we last said so
        self.tasks: set[asyncio.Task[None]] = set()
        #: sockets not (yet) owned by a transport -> how to close them at shutdown
        self.loose: dict[object, Callable[[], None]] = {}
        self._outcomes = {
            k: self.metrics.connections.labels(k)
            for k in ("terminated", "passthrough", "unknown_name", "no_certificate",
                      "bad_hello", "handshake_failed", "no_backend", "rejected_limit",
                      "timeout", "redirect", "not_found", "name_limit")
        }

    # -- accounting
    def outcome(self, what: str) -> None:
        self._outcomes[what].inc()

    def opened(self) -> bool:
        """Count a new client; False when the limit is reached (caller closes it)."""
        if self.count >= self.limits.max_connections:
            self.outcome("rejected_limit")
            return False
        self.count += 1
        self.metrics.active.inc()
        return True

    def closed(self) -> None:
        self.count -= 1
        self.metrics.active.dec()

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def new_splice(self) -> Splice:
        sp = Splice(asyncio.get_running_loop(), self.limits.idle_timeout, self._splice_done)
        self.splices.add(sp)
        return sp

    def claim(self, sp: Splice, route: Route) -> bool:
        """Count ``sp`` against its name's cap; False when the name is at its cap."""
        label = route.name.label
        n = self.per_name.get(label, 0)
        if n >= self.limits.max_connections_per_name:
            return False
        self.per_name[label] = n + 1
        sp.label = label
        return True

    def _unclaim(self, sp: Splice) -> None:
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

    def _splice_done(self, sp: Splice) -> None:
        self.splices.discard(sp)
        self._unclaim(sp)
        if sp.backend_addr is not None:
            self.balancer.release(sp.backend_addr)
        self.closed()

    # -- backends
    async def connect_backend(
        self, route: Route, sp: Splice, client: tuple[str, int], local: tuple[str, int]
    ) -> bool:
        """Dial the route's backends in balancer order until one answers."""
        for b in self.balancer.order(route.backends):
            if sp.client.closed:
                return False
            refusal = self.policy.judge(b)
            if refusal is not None:
                self._refused(route, refusal)
                continue
            try:
                transport, _ = await self.connector.connect(
                    b, lambda: sp.backend, self.limits.connect_timeout
                )
            except (OSError, TimeoutError) as e:
                failures = self.balancer.failed(b)
                self.metrics.backend_failures.inc()
                # One line when a backend goes down, not one per client while it stays down.
                log.log(logging.INFO if failures == 1 else logging.DEBUG,
                        "backend %s of %s failed: %s", b, route.name.label, e or "timeout")
                continue
            if sp.client.closed:
                transport.close()
                return False
            self.balancer.acquire(b)
            sp.backend_addr = b
            if route.name.proxy_protocol:
                transport.write(header(client, local))
            return True
        return False

    def _refused(self, route: Route, refusal: Refusal) -> None:
        """Count a refused backend; say so once a minute per name, not once per client."""
        self.metrics.backend_refused.inc()
        label = route.name.label
        now = time.monotonic()
        if now - self._refusal_logged.get(label, -_REFUSAL_LOG_EVERY) < _REFUSAL_LOG_EVERY:
            return
        if len(self._refusal_logged) >= 10_000:
            self._refusal_logged.clear()
        self._refusal_logged[label] = now
        log.warning("name %s: not connecting to a backend the policy refuses (%s): %s",
                    label, refusal.rule, refusal.detail)

    def close_all(self) -> None:
        for close in list(self.loose.values()):
            close()
        for task in list(self.tasks):
            task.cancel()
        for sp in list(self.splices):
            sp.abort()
