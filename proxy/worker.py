"""One extra proxy worker process, sharing the listening ports through ``SO_REUSEPORT``.

Started by ``proxy.workers.Workers`` so the kernel spreads new connections over N event
loops. Each worker follows the store itself (the cross-process poll), so nothing is
shared but the ports. A worker exits when its parent is gone.
usage: python -m proxy.worker CONFIG_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.service import ProxyService
from webgateway.config import Config, load_config
from webgateway.logsetup import configure as configure_logging
from webgateway.storefactory import open_store

log = logging.getLogger(__name__)


async def _serve(config: Config) -> None:
    store = await open_store(config.store)
    svc = ProxyService(config, store, CollectorRegistry(), reuse_port=True, spawn=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    try:
        await svc.start()
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await svc.stop()
        await store.close()


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    configure_logging(config.log, "proxy-worker")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(config))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(config))


if __name__ == "__main__":
    main()
