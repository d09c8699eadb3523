"""The proxy as a supervised service: follow the store, bind the listeners, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from ipaddress import ip_address

from prometheus_client import CollectorRegistry

from proxy.accesslog import AccessLog
from proxy.engine import Engine, Limits
from proxy.https import HttpsListener
from proxy.redirect import RedirectProtocol
from proxy.routes import RouteTable
from tunnel.gateway import PoolLimits, Tunnels
from webgateway.addresses import HostPort
from webgateway.backend_policy import policy_of
from webgateway.config import Config, ConfigError
from webgateway.feed import Follower
from webgateway.fleet import TunnelPresence, gateway_id
from webgateway.keyseal import KeySeal
from webgateway.listen import bind
from webgateway.store import Store
from webgateway.tasks import stop_task
from webgateway.workerpool import WorkerPool, pooled_registry

log = logging.getLogger(__name__)

BACKLOG = 4096
#: Seconds between adding open connections' bytes to the per-name series.
TRAFFIC_EVERY = 10.0


def limits_of(config: Config) -> Limits:
    p = config.proxy
    return Limits(p.handshake_timeout, p.idle_timeout, p.connect_timeout, p.max_connections,
                  p.max_connections_per_name)


class ProxyService:
    name = "proxy"

    def __init__(self, config: Config, store: Store, registry: CollectorRegistry, *,
                 worker: bool = False) -> None:
        """``worker``: one of the pool's processes (shares the ports, starts no pool)."""
        self.config = config
        self.store = store
        self.table = RouteTable(config.zone.name, KeySeal(config.store.key))
        self.pool = WorkerPool("proxy", "proxy.workers", "proxy.service:worker",
                               0 if worker else config.proxy.workers - 1)
        self.engine = Engine(self.table, limits_of(config), pooled_registry(registry, self.pool),
                             policy=policy_of(config), catch_all=config.proxy.catch_all)
        self.follower = Follower(store, self.table)
        # Only the main process records where tunnels are held: workers keep pools of
        # their own (see the warning in ``start``), and one writer per gateway id is kept.
        self.presence = None if worker else TunnelPresence(
            store, gateway_id(config), config.fleet.heartbeat)
        self.reuse_port = worker or config.proxy.workers > 1
        self._https: list[HttpsListener] = []
        self._http: list[asyncio.AbstractServer] = []
        self._follow: asyncio.Task[None] | None = None
        self._traffic: asyncio.Task[None] | None = None
        self.https_addresses: list[tuple[str, int]] = []
        self.http_addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        self._check_catch_all()
        if self.config.log.access_log is not None:
            self.engine.access_log = AccessLog(self.config.log.access_log)
        p = self.config.proxy
        self.engine.tunnels = Tunnels(
            lambda label: self.table.names.get(label),
            PoolLimits(p.tunnel_max_idle_per_name, p.tunnel_max_waiters_per_name,
                       p.tunnel_failures_per_minute),
            on_presence=self.presence.changed if self.presence is not None else None)
        if self.presence is not None:
            self.presence.start()
        await self.follower.load()
        self._follow = asyncio.get_running_loop().create_task(self.follower.run())
        self._traffic = asyncio.get_running_loop().create_task(self._count_traffic())
        try:
            for addr in self.config.proxy.https_listen:
                sock = bind("proxy.https_listen", addr, reuse_port=self.reuse_port,
                            backlog=BACKLOG,
                            defer_accept=math.ceil(self.config.proxy.handshake_timeout))
                self._https.append(HttpsListener(self.engine, sock))
                self.https_addresses.append(sock.getsockname()[:2])
            loop = asyncio.get_running_loop()
            for addr in self.config.proxy.http_listen:
                sock = bind("proxy.http_listen", addr, reuse_port=self.reuse_port,
                            backlog=BACKLOG)
                srv = await loop.create_server(lambda: RedirectProtocol(self.engine), sock=sock)
                self._http.append(srv)
                self.http_addresses.append(sock.getsockname()[:2])
        except BaseException:
            await self.stop()
            raise
        https = tuple(HostPort(ip_address(h), p) for h, p in self.https_addresses)
        http = tuple(HostPort(ip_address(h), p) for h, p in self.http_addresses)
        # A port-0 listener is known only now: a backend there would be a loop too.
        self.engine.policy = self.engine.policy.with_listeners(
            [("proxy.https_listen", a) for a in https] + [("proxy.http_listen", a) for a in http])
        proxy = replace(self.config.proxy, https_listen=https, http_listen=http)
        try:
            self._check_catch_all()
            await self.pool.start(replace(self.config, proxy=proxy))
        except ConfigError:
            await self.stop()
            raise
        if self.pool.count:
            log.warning("tunnel names need [proxy] workers = 1 for now: each worker keeps"
                        " its own pool of node connections, and a client may land on a"
                        " worker without one (502)")

    async def stop(self) -> None:
        await self.pool.stop()
        for lst in self._https:
            lst.close()
        self._https.clear()
        for srv in self._http:
            srv.close()
        self._http.clear()
        for task in (self._follow, self._traffic):
            await stop_task(task)
        self._follow = self._traffic = None
        self.engine.close_all()
        if self.presence is not None:
            await self.presence.stop()
        await asyncio.sleep(0.01)  # the aborted pairs' last access-log lines
        if self.engine.access_log is not None:
            self.engine.access_log.close()
            self.engine.access_log = None

    async def _count_traffic(self) -> None:
        while True:
            await asyncio.sleep(TRAFFIC_EVERY)
            self.engine.count_traffic()

    def _check_catch_all(self) -> None:
        """The catch-all is a backend like any other: the policy must allow it."""
        target = self.config.proxy.catch_all
        refusal = self.engine.policy.judge(target) if target is not None else None
        if refusal is not None:
            raise ConfigError("proxy.catch_all", refusal.detail)


def build(config: Config, store: Store, registry: CollectorRegistry) -> ProxyService:
    return ProxyService(config, store, registry)


def worker(config: Config, store: Store, registry: CollectorRegistry) -> ProxyService:
    return ProxyService(config, store, registry, worker=True)
