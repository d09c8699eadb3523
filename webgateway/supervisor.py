"""Start the chosen services in one process and stop them cleanly on SIGTERM/SIGINT.

The store is opened once and shared, so in the default one-process deployment every
change reaches dnsd and the proxy through an in-process event, with no polling delay.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry, Histogram

from webgateway.config import Config
from webgateway.fleet import Registration
from webgateway.service import Service, ServiceFactory, load_factory
from webgateway.storefactory import open_store

log = logging.getLogger(__name__)

#: A commit is an fsync or two on SQLite, a round trip or two on PostgreSQL.
STORE_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0)

#: Service name -> "module:factory". Imported lazily so one service alone loads only its code.
FACTORIES = {
    "dnsd": "dnsd.service:build",
    "certd": "certd.service:build",
    "proxy": "proxy.service:build",
    "api": "webgateway.apiservice:build",
}


def factory(name: str) -> ServiceFactory:
    return load_factory(FACTORIES[name])


async def serve(config: Config, names: list[str], stop: asyncio.Event | None = None) -> None:
    """Run ``names`` until ``stop`` is set or a termination signal arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await open_store(config.store)
    registry = CollectorRegistry()
    store.write_observer = Histogram(
        "webgateway_store_write_seconds", "Write transactions of the store, begin to commit",
        buckets=STORE_WRITE_BUCKETS, registry=registry).observe
    started: list[Service] = []
    registration = Registration(config, store, names)
    try:
        await registration.start()
        for name in names:
            svc = factory(name)(config, store, registry)
            await svc.start()
            started.append(svc)
            log.info("%s started", name)
        log.info("webgateway running (%s)", ", ".join(names))
        await stop.wait()
        log.info("stopping")
    finally:
        for svc in reversed(started):
            try:
                await asyncio.wait_for(svc.stop(), 10)
            except Exception:
                log.exception("%s did not stop cleanly", svc.name)
        await registration.stop()
        await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
