"""Extra dnsd worker processes sharing the listen ports through SO_REUSEPORT.

Python answers on one core; ``[dns] workers = N`` starts N-1 more processes, each with
its own store connection, zone view and follower (the store's serial poll keeps them
current, as for any other process), and the kernel spreads queries across them. A
worker exits when the parent's pipe closes, so a killed parent leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
from dataclasses import replace
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry

from webgateway.addresses import HostPort
from webgateway.config import Config
from webgateway.logsetup import configure as configure_logging

log = logging.getLogger(__name__)


def worker_config(config: Config, ports: list[int]) -> Config:
    """The parent's config bound to the ports it really got (port 0 resolved)."""
    listen = tuple(HostPort(a.host, p) for a, p in zip(config.dns.listen, ports, strict=True))
    return replace(config, dns=replace(config.dns, listen=listen, workers=1))


async def _serve(config: Config, conn: multiprocessing.connection.Connection) -> None:
    from dnsd.service import DnsService
    from webgateway.storefactory import open_store

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(conn.fileno(), stop.set)  # the parent wrote or went away
    store = await open_store(config.store)
    svc = DnsService(config, store, CollectorRegistry(), reuse_port=True, notify=False)
    try:
        await svc.start()
        conn.send("ready")
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        await svc.stop()
        await store.close()


def worker_main(config: Config, conn: multiprocessing.connection.Connection) -> None:
    """Entry point of a worker process (spawned: nothing inherited but the arguments)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    configure_logging(config.log, "dnsd-worker")
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(_serve(config, conn))
        except Exception as e:
            log.error("worker failed: %s", e)
            with contextlib.suppress(OSError):
                conn.send(f"failed: {e}")


class WorkerPool:
    """Starts ``count`` worker processes and stops them (TERM, then KILL after a grace)."""

    START_TIMEOUT = 60.0  # a worker loads the whole zone before it says ready

    def __init__(self, config: Config, ports: list[int], count: int) -> None:
        self.config = worker_config(config, ports)
        self.count = count
        self.procs: list[tuple[BaseProcess, multiprocessing.connection.Connection]] = []

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.count):
            parent, child = ctx.Pipe()
            spawned = ctx.Process(target=worker_main, args=(self.config, child), daemon=True,
                                  name="dnsd-worker")
            spawned.start()
            child.close()
            self.procs.append((spawned, parent))
        for worker, conn in self.procs:
            ready = await asyncio.to_thread(conn.poll, self.START_TIMEOUT)
            msg = conn.recv() if ready else "no answer"
            if msg != "ready":
                await self.stop()
                raise RuntimeError(f"dnsd worker {worker.pid} did not start: {msg}")
        log.info("dnsd workers started: %s", ", ".join(str(p.pid) for p, _ in self.procs))

    async def stop(self, grace: float = 5.0) -> None:
        for _, conn in self.procs:
            conn.close()  # the worker sees EOF and stops
        for proc, _ in self.procs:
            await asyncio.to_thread(proc.join, grace)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, grace)
        self.procs.clear()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs if p.pid is not None]
