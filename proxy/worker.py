"""Extra proxy worker processes sharing the listening ports through ``SO_REUSEPORT``.

One Python process saturates one core; ``[proxy] workers = N`` starts N-1 of these next
to the in-process proxy so the kernel spreads new connections over N event loops. Each
worker follows the store itself (the cross-process poll), so nothing is shared but
the ports. A worker exits when its parent is gone.
usage: python -m proxy.worker CONFIG_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from webgateway.config import Config, load_config
from webgateway.sqlite_store import SqliteStore

log = logging.getLogger(__name__)


class Workers:
    """The parent's handle on its worker processes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.procs: list[subprocess.Popen[bytes]] = []

    def wanted(self) -> int:
        p = self.config.proxy
        ports = [a.port for a in (*p.https_listen, *p.http_listen)]
        if p.workers <= 1 or self.config.source is None or 0 in ports:
            return 0
        return p.workers - 1

    def start(self) -> None:
        for _ in range(self.wanted()):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "proxy.worker", str(self.config.source)],
                stdin=subprocess.DEVNULL,
            ))
        if self.procs:
            log.info("started %d proxy worker processes", len(self.procs))

    async def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            for _ in range(50):
                if p.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()


async def _serve(config: Config) -> None:
    from proxy.service import ProxyService

    store = SqliteStore(config.store.path, config.store.poll_interval)
    await store.open()
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
    logging.basicConfig(level=getattr(logging, config.log.level.upper()),
                        format="%(asctime)s %(levelname)s proxy-worker: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(config))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(config))


if __name__ == "__main__":
    main()
