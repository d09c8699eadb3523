"""The fleet's registry: each gateway says who it is, that it lives, and which tunnels it holds.

Gateways sharing one store find each other here, not in a file: ``Registration`` (run by
``webgateway run``) writes this gateway's row (its public addresses, DNS and HTTPS listeners,
API URL), heartbeats it every ``[fleet] heartbeat`` s and drops the rows of gateways silent
for ``stale_after`` s (any live gateway does, so a ``kill -9``'d one is forgotten in time);
a clean stop removes its own row at once. ``TunnelPresence`` (run by the proxy) keeps the
store's presence rows equal to the tunnel names this gateway holds a live tunnel for: dnsd
answers a tunnel name only with the addresses of gateways that hold it (``dnsd.zone``).

Only rows that come or go touch the change feed; heartbeats move no serial.
Clocks: ``seen`` is each gateway's own time, so the fleet's clocks must agree (NTP) to well
within ``stale_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from webgateway.addresses import HostPort, IPAddress
from webgateway.config import Config
from webgateway.model import Gateway
from webgateway.store import Store, StoreError
from webgateway.tasks import stop_task
from webgateway.when import rfc3339

log = logging.getLogger(__name__)

#: Seconds between retries of a presence write the store refused.
RETRY = 1.0


def gateway_id(config: Config, hostname: str | None = None) -> str:
    """``[fleet] id``, or ``HOSTNAME/LISTENER``: stable across restarts, and two gateways on
    one host (tests, a staging fleet) differ by their listener."""
    if config.fleet.id:
        return config.fleet.id
    first = (*config.proxy.https_listen, *config.dns.listen)[0]
    return f"{hostname or socket.gethostname()}/{first}"


def public_addresses(config: Config) -> tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]:
    """This gateway's own public (IPv4, IPv6): ``[fleet] ipv4/ipv6``, else those of the
    zone's gateway addresses the proxy listens on, else all of them (one gateway, or
    wildcard listeners: then a tunnel name cannot be steered to this gateway alone)."""
    f, z = config.fleet, config.zone
    if f.ipv4 or f.ipv6:
        return f.ipv4, f.ipv6
    bound = {hp.host for hp in config.proxy.https_listen}
    v4 = tuple(a for a in z.gateway_ipv4 if a in bound)
    v6 = tuple(a for a in z.gateway_ipv6 if a in bound)
    if v4 or v6:
        return v4, v6
    return z.gateway_ipv4, z.gateway_ipv6


def local_gateway(config: Config, services: Iterable[str], now: float,
                  hostname: str | None = None) -> Gateway:
    """This gateway's registry row, as the services it runs make it reachable."""
    names = set(services)
    v4, v6 = public_addresses(config)
    api = ""
    if "api" in names:
        listen = config.api.listen
        api = f"http://{reachable(listen, v4 + v6)}"
    return Gateway(
        id=gateway_id(config, hostname),
        ipv4=v4,
        ipv6=v6,
        dns=config.dns.listen if "dnsd" in names else (),
        https=config.proxy.https_listen if "proxy" in names else (),
        api=api,
        started=now,
        seen=now,
    )


def reachable(listen: HostPort, public: Iterable[IPAddress]) -> HostPort:
    """Where another host reaches a listener: itself, or for a wildcard address the
    gateway's first public address of that family (loopback when it has none)."""
    if not listen.host.is_unspecified:
        return listen
    for a in public:
        if a.version == listen.host.version:
            return HostPort(a, listen.port)
    loop = "::1" if listen.host.version == 6 else "127.0.0.1"
    return HostPort(ipaddress.ip_address(loop), listen.port)


def fleet_json(gateways: Iterable[Gateway], tunnels: Mapping[str, frozenset[str]],
               now: float, stale_after: float) -> dict[str, Any]:
    """``GET /v1/fleet``: each gateway with its listeners, age and the tunnel names it holds."""
    held: dict[str, list[str]] = {}
    for label, ids in sorted(tunnels.items()):
        for gid in ids:
            held.setdefault(gid, []).append(label)
    return {"gateways": [
        {
            "id": g.id,
            "ipv4": [str(a) for a in g.ipv4],
            "ipv6": [str(a) for a in g.ipv6],
            "dns": [str(a) for a in g.dns],
            "https": [str(a) for a in g.https],
            "api": g.api,
            "started": rfc3339(g.started),
            "seen": rfc3339(g.seen),
            "seen_seconds_ago": round(now - g.seen, 1),
            "stale": now - g.seen > stale_after,
            "tunnels": held.get(g.id, []),
        }
        for g in gateways
    ]}


class _Outage:
    """Log a store failure when it starts and when it ends, not once per retry."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, e: StoreError) -> None:
        if not self.down:
            log.warning("%s: the store refused (%s); retrying", self.what, e)
        self.down = True

    def ok(self) -> None:
        if self.down:
            log.info("%s: the store answers again", self.what)
        self.down = False


class Registration:
    """This gateway's row in the registry, heartbeated; stale rows of others dropped."""

    def __init__(self, config: Config, store: Store, services: Iterable[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.fleet = config.fleet
        self.gateway = local_gateway(config, services, clock())
        self._task: asyncio.Task[None] | None = None
        self._outage = _Outage(f"fleet registration of {self.gateway.id}")

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def beat(self) -> None:
        """One heartbeat: refresh our row, forget gateways that stopped beating."""
        now = self.clock()
        try:
            for gone in await self.store.register_gateway(
                    dataclasses.replace(self.gateway, seen=now), self.fleet.stale_after):
                log.warning("fleet: gateway %s sent no heartbeat for %g s: dropped with its"
                            " tunnels", gone, self.fleet.stale_after)
        except StoreError as e:
            self._outage.failed(e)
        else:
            self._outage.ok()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.fleet.heartbeat)
            await self.beat()

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        try:
            await self.store.remove_gateway(self.gateway.id)
        except StoreError as e:
            log.warning("fleet: could not remove %s from the registry (%s); the others drop"
                        " it after %g s", self.gateway.id, e, self.fleet.stale_after)


class TunnelPresence:
    """Mirror the tunnel names this gateway holds into the store, promptly and heartbeated.

    ``changed`` is called by the tunnel pool (synchronously, from its callbacks); one task
    writes the whole held set (``Store.sync_tunnels``: idempotent, so a failed write is
    simply repeated) as soon as it changes, and every ``heartbeat`` s otherwise.
    """

    def __init__(self, store: Store, gateway: str, heartbeat: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.gateway = gateway
        self.heartbeat = heartbeat
        self.clock = clock
        self.held: set[str] = set()
        self.written: set[str] | None = None  # what the store has, as far as we know
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = _Outage(f"tunnel presence of {gateway}")

    def changed(self, label: str, present: bool) -> None:
        if present:
            self.held.add(label)
        else:
            self.held.discard(label)
        self._wake.set()

    def start(self) -> None:
        """Follow the pool; the first write clears rows a previous run of this gateway (a
        crash, then a restart within ``stale_after``) may have left."""
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def sync(self) -> bool:
        held = frozenset(self.held)
        try:
            await self.store.sync_tunnels(self.gateway, held, self.clock())
        except StoreError as e:
            self._outage.failed(e)
            return False
        self._outage.ok()
        self.written = set(held)
        return True

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat)
            self._wake.clear()
            if not await self.sync():
                await asyncio.sleep(RETRY)
                self._wake.set()

    async def stop(self) -> None:
        """Stop following and tell the store this gateway holds no tunnel any more (the
        pool was just closed; its connections' own callbacks may not have run yet)."""
        self.held.clear()
        await stop_task(self._task)
        self._task = None
        await self.sync()
