"""Start the chosen services in one process and stop them cleanly on SIGTERM/SIGINT.

The store is opened once and shared, so in the default one-process deployment every
change reaches dnsd and the proxy through an in-process event, with no polling delay.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal

from prometheus_client import CollectorRegistry

from webgateway.config import Config
from webgateway.service import Service, ServiceFactory
from webgateway.sqlite_store import SqliteStore

log = logging.getLogger(__name__)

#: Service name -> "module:factory". Imported lazily so one service alone loads only its code.
FACTORIES = {
    "dnsd": "dnsd.service:build",
    "certd": "certd.service:build",
    "proxy": "proxy.service:build",
    "api": "webgateway.api:build",
}


def factory(name: str) -> ServiceFactory:
    module, attr = FACTORIES[name].split(":")
    built: ServiceFactory = getattr(importlib.import_module(module), attr)
    return built


async def serve(config: Config, names: list[str], stop: asyncio.Event | None = None) -> None:
    """Run ``names`` until ``stop`` is set or a termination signal arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = SqliteStore(config.store.path, config.store.poll_interval)
    await store.open()
    registry = CollectorRegistry()
    started: list[Service] = []
    try:
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
        await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
