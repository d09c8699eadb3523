"""Worker processes that share a service's listening ports through ``SO_REUSEPORT``.

One Python process answers on one core, so ``[dns] workers`` / ``[proxy] workers`` = N
runs the service here and in N-1 worker processes, each with its own store connection
and follower; the kernel spreads datagrams and connections over the N sockets.

Why it is built this way:
- Spawned, not forked: a worker starts from a clean interpreter (no copy of the parent's
  event loop, store connection or threads); the config travels pickled, ports resolved.
- One socketpair per worker carries the control messages. The worker's first message says it
  serves, or why it cannot, so the parent's ``start`` returns only once all serve. Later
  messages answer the parent's one-byte requests for metrics: the worker writes only
  when asked, so neither side can fill the other's buffer and block.
- Parent death: the worker watches its end of that socketpair, and EOF (the parent gone,
  however it died, SIGKILL included) stops it as SIGTERM does. This needs no ctypes and
  is not tied to the thread that spawned the worker, as ``PR_SET_PDEATHSIG`` is; it needs
  the worker's event loop to run, which it does as soon as it serves.
- Descriptors: a pool made with ``channel`` gives each worker a second socketpair, of
  ``SOCK_SEQPACKET`` (one message, one descriptor: no framing to get wrong), its end
  passed to the worker's factory as ``channel=``; the parent's end goes to ``channel``
  as the worker is launched (before it serves: it may hand over from its first accept).
  The proxy's workers hand tunnel connections to the main process there (``proxy.handoff``).
- Metrics: the parent pulls each worker's families every ``metrics_interval`` and
  ``PooledMetrics`` merges them into its own, with a ``worker`` label. prometheus_client's
  multiprocess mode was not used: it is process-global (an environment variable read at
  import, files per PID to clean up) and does not see custom collectors such as dnsd's.
- A worker that dies is logged and started again after a back-off (doubling while it
  keeps dying young); the others keep serving, since the kernel drops a closed socket
  from the port's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from webgateway.config import Config, ConfigError
from webgateway.logsetup import configure as configure_logging
from webgateway.service import Service, load_factory
from webgateway.store import Store
from webgateway.storefactory import open_store

log = logging.getLogger(__name__)

#: A metric family as it crosses the pipe: name, help, type, unit, [[sample, labels, value]].
Family = list[Any]


class ChannelFactory(Protocol):
    """A worker's service factory in a pool made with ``channel``."""

    def __call__(self, config: Config, store: Store, registry: CollectorRegistry, *,
                 channel: socket.socket) -> Service: ...


def families(registry: CollectorRegistry) -> list[Family]:
    return [[m.name, m.documentation, m.type, m.unit,
             [[s.name, s.labels, s.value] for s in m.samples]] for m in registry.collect()]


# ----------------------------------------------------------------------------- worker side


def _send(conn: Connection, msg: dict[str, Any]) -> bool:
    try:
        conn.send_bytes(json.dumps(msg).encode())
    except OSError:
        return False
    return True


async def _serve(factory: str, config: Config, conn: Connection, parent: int,
                 channel: socket.socket | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if os.getppid() != parent:
        return  # the parent died while we were starting
    registry = CollectorRegistry()
    store: Store | None = None
    svc = None
    try:
        try:
            store = await open_store(config.store)
            build = load_factory(factory)
            svc = (build(config, store, registry) if channel is None
                   else cast(ChannelFactory, build)(config, store, registry, channel=channel))
            await svc.start()
        except ConfigError as e:
            _send(conn, {"failed": [e.key, e.reason]})
            return
        except Exception as e:
            log.exception("worker did not start")
            _send(conn, {"failed": ["", f"{type(e).__name__}: {e}"]})
            return

        def requested() -> None:
            try:
                conn.recv_bytes()
            except (EOFError, OSError):
                stop.set()  # the parent is gone
                return
            if not _send(conn, {"metrics": families(registry)}):
                stop.set()

        if not _send(conn, {"ready": families(registry)}):
            return
        loop.add_reader(conn.fileno(), requested)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(conn.fileno())
    finally:
        if svc is not None:
            await svc.stop()
        if store is not None:
            await store.close()


def worker_main(kind: str, slot: int, factory: str, config: Config, parent: int,
                conn: Connection, channel: socket.socket | None = None) -> None:
    """Entry point of a worker process (spawned: nothing inherited but the arguments)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: the parent decides
    configure_logging(config.log, f"{kind}-worker-{slot}")
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(factory, config, conn, parent, channel))


# ----------------------------------------------------------------------------- parent side


@dataclass(eq=False)
class _Worker:
    slot: int
    proc: BaseProcess
    conn: Connection
    since: float
    families: list[Family] = field(default_factory=list)
    asked: bool = False
    watched: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid or 0


def _exit_text(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


async def _readable(fds: list[int], timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until one of ``fds`` is readable (data or EOF); False on timeout."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    for fd in fds:
        loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        for fd in fds:
            loop.remove_reader(fd)


class WorkerPool:
    """``count`` worker processes of one service, kept running until ``stop``.

    ``factory`` ("module:function") builds the service inside a worker from the config
    given to ``start`` (its listeners already bound here, ports resolved); ``key`` is the
    config key that asked for workers, named in errors.
    """

    START_TIMEOUT = 60.0  # a dnsd worker loads the whole zone before it serves
    MAX_RESTART_DELAY = 30.0

    def __init__(self, kind: str, key: str, factory: str, count: int, *,
                 metrics_interval: float = 1.0, restart_delay: float = 1.0,
                 channel: Callable[[socket.socket], None] | None = None) -> None:
        """``channel``: takes this process's end of each launched worker's descriptor
        channel (and closes it once the worker is gone); None: no such channel."""
        self.kind, self.key, self.factory, self.count = kind, key, factory, count
        self.channel = channel
        self.metrics_interval = metrics_interval
        self.restart_delay = restart_delay
        self.config: Config | None = None
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._delay: dict[int, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._ctx = multiprocessing.get_context("spawn")

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values()]

    def snapshots(self) -> Iterator[tuple[int, list[Family]]]:
        for slot, w in sorted(self.workers.items()):
            yield slot, w.families

    async def start(self, config: Config) -> None:
        """Start every worker; return once all serve, or stop them all and raise."""
        if not self.count:
            return
        self.config = config
        self._stopping = False
        slots = range(1, self.count + 1)
        results = await asyncio.gather(*(self._launch(s) for s in slots), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                await self.stop()
                raise r
        self._spawn_task(self._poll_metrics())
        log.info("%s workers serving: pids %s", self.kind, ", ".join(map(str, self.pids)))

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM each worker by PID, SIGKILL what is left after ``grace`` seconds."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        workers = list(self.workers.values())
        self.workers.clear()
        for w in workers:
            self._unwatch(w)
            if w.proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)
        for w in workers:
            if w.proc.exitcode is None and not await _readable([w.proc.sentinel], grace):
                log.warning("%s worker %d (pid %d) ignored SIGTERM; killing it",
                            self.kind, w.slot, w.pid)
                w.proc.kill()
            w.proc.join(grace)
            w.conn.close()

    # -- starting one worker
    async def _launch(self, slot: int) -> None:
        assert self.config is not None
        parent_end, child_end = self._ctx.Pipe()
        ours, theirs = (socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                        if self.channel is not None else (None, None))
        proc = self._ctx.Process(
            target=worker_main, name=f"{self.kind}-worker-{slot}", daemon=True,
            args=(self.kind, slot, self.factory, self.config, os.getpid(), child_end, theirs))
        try:
            proc.start()
        except BaseException:
            parent_end.close()
            if ours is not None:
                ours.close()
            raise
        finally:
            child_end.close()
            if theirs is not None:
                theirs.close()
        if ours is not None and self.channel is not None:
            self.channel(ours)  # EOF there once the worker is gone, however it ends
        w = _Worker(slot, proc, parent_end, asyncio.get_running_loop().time())
        self.workers[slot] = w
        msg = await self._first_message(w)
        if "ready" in msg:
            w.families = msg["ready"]
            self._watch(w)
            return
        del self.workers[slot]
        key, reason = msg["failed"]
        if w.proc.exitcode is None:
            w.proc.kill()
        w.proc.join(5)
        w.conn.close()
        raise ConfigError(key or self.key,
                          f"{self.kind} worker {slot} (pid {w.pid}) did not start: {reason}")

    async def _first_message(self, w: _Worker) -> dict[str, Any]:
        if await _readable([w.conn.fileno(), w.proc.sentinel], self.START_TIMEOUT):
            with contextlib.suppress(EOFError, OSError, ValueError):
                if w.conn.poll():
                    msg = json.loads(w.conn.recv_bytes())
                    if isinstance(msg, dict) and ("ready" in msg or "failed" in msg):
                        return msg
                    return {"failed": ["", "its first message was neither ready nor failed"]}
            w.proc.join(1)
            return {"failed": ["", f"exited with {_exit_text(w.proc.exitcode)}"]}
        return {"failed": ["", f"not serving after {self.START_TIMEOUT:.0f} s"]}

    # -- watching the running ones
    def _watch(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(w.conn.fileno(), self._message, w)
        loop.add_reader(w.proc.sentinel, self._exited, w)
        w.watched = True

    def _unwatch(self, w: _Worker) -> None:
        if w.watched:
            loop = asyncio.get_running_loop()
            loop.remove_reader(w.conn.fileno())
            loop.remove_reader(w.proc.sentinel)
            w.watched = False

    def _message(self, w: _Worker) -> None:
        try:
            msg = json.loads(w.conn.recv_bytes())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(w.conn.fileno())  # the sentinel follows
            return
        except ValueError:
            log.warning("%s worker %d sent an unreadable message", self.kind, w.slot)
            return
        if isinstance(msg, dict) and isinstance(msg.get("metrics"), list):
            w.families = msg["metrics"]
        w.asked = False

    def _exited(self, w: _Worker) -> None:
        self._unwatch(w)
        w.proc.join(1)
        w.conn.close()
        if self.workers.get(w.slot) is w:
            del self.workers[w.slot]
        loop = asyncio.get_running_loop()
        ran = loop.time() - w.since
        delay = self._delay.get(w.slot, self.restart_delay)
        delay = self.restart_delay if ran >= self.MAX_RESTART_DELAY else delay
        self._delay[w.slot] = min(delay * 2, self.MAX_RESTART_DELAY)
        log.error("%s worker %d (pid %d) exited with %s after %.0f s; the others serve, "
                  "starting it again in %.0f s", self.kind, w.slot, w.pid,
                  _exit_text(w.proc.exitcode), ran, delay)
        self._spawn_task(self._restart(w.slot, delay))

    async def _restart(self, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            await self._launch(slot)
        except ConfigError as e:
            delay = self._delay.get(slot, self.restart_delay)
            self._delay[slot] = min(delay * 2, self.MAX_RESTART_DELAY)
            log.error("%s; trying again in %.0f s", e, delay)
            self._spawn_task(self._restart(slot, delay))
            return
        self.restarts += 1
        log.info("%s worker %d serving again (pid %d)", self.kind, slot, self.workers[slot].pid)

    async def _poll_metrics(self) -> None:
        while True:
            for w in list(self.workers.values()):
                if w.watched and not w.asked:
                    try:
                        w.conn.send_bytes(b"m")  # one byte, one outstanding: never blocks
                    except OSError:
                        continue  # exiting: the sentinel tells
                    w.asked = True
            await asyncio.sleep(self.metrics_interval)

    def _spawn_task(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class PooledMetrics(Collector):
    """A service's own metric families plus its workers', one family per name.

    With workers, every sample gets a ``worker`` label ("0" for this process, the slot
    for each worker, stable across restarts), so PromQL's ``sum`` gives the service's
    totals and a restarted worker reads as a counter reset. Without workers the own
    families pass unchanged.
    """

    def __init__(self, own: CollectorRegistry, pool: WorkerPool) -> None:
        self.own = own
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        if not self.pool.count:
            yield from self.own.collect()
            return
        merged: dict[str, Metric] = {}

        def add(fams: list[Family], worker: str) -> None:
            for name, doc, typ, unit, samples in fams:
                m = merged.get(name)
                if m is None:
                    m = merged[name] = Metric(name, doc, typ, unit)
                for sname, labels, value in samples:
                    m.add_sample(sname, {**labels, "worker": worker}, value)

        add(families(self.own), "0")
        for slot, fams in self.pool.snapshots():
            add(fams, str(slot))
        yield from merged.values()


def pooled_registry(registry: CollectorRegistry, pool: WorkerPool) -> CollectorRegistry:
    """The registry a service registers its metrics in: merged with its workers' into
    ``registry`` (the parent's, served at ``/metrics``). A family registered straight in
    ``registry`` would miss the workers' samples and clash by name with their family."""
    own = CollectorRegistry()
    registry.register(PooledMetrics(own, pool))
    return own

