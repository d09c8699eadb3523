"""The proxy as a supervised service: follow the store, bind the listeners, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from dataclasses import replace
from ipaddress import ip_address

from prometheus_client import CollectorRegistry

from proxy.accesslog import AccessLog
from proxy.dispatch import Dispatcher
from proxy.engine import Engine, Limits
from proxy.handoff import Receiver, Sender
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
                 worker: bool = False, channel: socket.socket | None = None) -> None:
        """``worker``: one of the pool's processes (shares the ports, starts no pool);
        ``channel``: a worker's way to hand tunnel connections to the main process."""
        self.config = config
        self.store = store
        self.worker = worker
        self.table = RouteTable(config.zone.name, KeySeal(config.store.key))
        self.pool = WorkerPool("proxy", "proxy.workers", "proxy.service:worker",
                               0 if worker else config.proxy.workers - 1, channel=self._attach)
        self.own_registry = pooled_registry(registry, self.pool)
        self.engine = Engine(self.table, limits_of(config), self.own_registry,
                             policy=policy_of(config), catch_all=config.proxy.catch_all)
        self.follower = Follower(store, self.table)
        # Tunnels live in the main process only: workers hand their tunnel connections
        # to it (``proxy.handoff``), so it alone records where they are held.
        self.presence = None if worker else TunnelPresence(
            store, gateway_id(config), config.fleet.heartbeat)
        self.channel = channel
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
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
        if not self.worker:
            self.engine.tunnels = Tunnels(
                lambda label: self.table.names.get(label),
                PoolLimits(p.tunnel_max_idle_per_name, p.tunnel_max_waiters_per_name,
                           p.tunnel_failures_per_minute),
                on_presence=self.presence.changed if self.presence is not None else None)
        if self.channel is not None:
            self.sender = Sender(self.engine, self.channel, self.own_registry)
            self.engine.hand_off = self.sender.send
        elif self.pool.count:
            self.receiver = Receiver(self.engine, Dispatcher(self.engine).dispatch,
                                     self.own_registry)
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
            log.info("tunnel connections the %d workers accept are handed to this process"
                     " (pid %d), which holds the tunnels", self.pool.count, os.getpid())

    async def stop(self) -> None:
        await self.pool.stop()
        if self.receiver is not None:
            self.receiver.close()
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
        if self.sender is not None:
            self.sender.close()
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

    def _attach(self, channel: socket.socket) -> None:
        """A worker launched: read what it hands over (``start`` made the receiver)."""
        if self.receiver is None:
            channel.close()
            return
        self.receiver.attach(channel)

    def _check_catch_all(self) -> None:
        """The catch-all is a backend like any other: the policy must allow it."""
        target = self.config.proxy.catch_all
        refusal = self.engine.policy.judge(target) if target is not None else None
        if refusal is not None:
            raise ConfigError("proxy.catch_all", refusal.detail)


def build(config: Config, store: Store, registry: CollectorRegistry) -> ProxyService:
    return ProxyService(config, store, registry)


def worker(config: Config, store: Store, registry: CollectorRegistry, *,
           channel: socket.socket | None = None) -> ProxyService:
    return ProxyService(config, store, registry, worker=True, channel=channel)
