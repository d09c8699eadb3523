"""The parent's handle on its extra proxy worker processes (``proxy.worker``).

One Python process saturates one core; ``[proxy] workers = N`` starts N-1 worker
processes next to the in-process proxy, sharing its ports through ``SO_REUSEPORT``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

from webgateway.config import Config

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
