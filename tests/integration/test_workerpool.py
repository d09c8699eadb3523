"""The worker processes of ``[dns] workers`` / ``[proxy] workers`` (``webgateway.workerpool``).

Real processes, real sockets on loopback: readiness (and the error when a worker cannot
serve), a SIGKILLed worker noticed and replaced while the others answer, the parent
SIGKILLed and its workers gone within 2 s, and the workers' counters in the parent's
``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dnsd.service import DnsService
from tests.gateway import CLI, wait_http, write_config
from tests.procs import alive, ask_from_new_port
from tests.support import ZONE, free_port, make_config
from webgateway.config import Config, ConfigError
from webgateway.sqlite_store import SqliteStore
from webgateway.store import Store
from webgateway.workerpool import WorkerPool


def listeners(port: int) -> set[int]:
    """PIDs with a listening TCP socket on ``port`` (from /proc, no ss needed)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    pids: set[int] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.add(int(pid))
        except OSError:
            continue
    return pids


@contextlib.contextmanager
def launched(cfg: Path, command: str) -> Iterator[subprocess.Popen[str]]:
    """``webgateway COMMAND`` in a child process, killed at the end if still running."""
    proc = subprocess.Popen([*CLI, command, "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


# ------------------------------------------------------------------ factories for the pool


class _Refuses:
    name = "refuses"

    async def start(self) -> None:
        raise ConfigError("test.key", "cannot serve this")

    async def stop(self) -> None:
        pass


class _Dies:
    name = "dies"

    async def start(self) -> None:
        os._exit(3)

    async def stop(self) -> None:
        pass


def refuses(config: Config, store: Store, registry: CollectorRegistry) -> _Refuses:
    return _Refuses()


def dies(config: Config, store: Store, registry: CollectorRegistry) -> _Dies:
    return _Dies()


@pytest.mark.parametrize(("factory", "key", "reason"), [
    ("refuses", "test.key", "did not start: cannot serve this"),
    ("dies", "dns.workers", "did not start: exited with code 3"),
])
async def test_start_raises_naming_what_failed(tmp_path: Path, factory: str, key: str,
                                                reason: str) -> None:
    cfg = make_config(tmp_path)
    store = SqliteStore(cfg.store.path)  # as in service: the parent has made the store
    await store.open()
    await store.close()
    pool = WorkerPool("dnsd", "dns.workers", f"{__name__}:{factory}", 2)
    with pytest.raises(ConfigError) as e:
        await pool.start(cfg)
    assert e.value.key == key and reason in e.value.reason, e.value
    assert pool.pids == []


async def test_a_killed_worker_is_noticed_the_others_answer_and_it_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webgateway.workerpool")
    cfg = make_config(tmp_path, dns={"listen": ["127.0.0.1:0"], "workers": 3})
    store = SqliteStore(cfg.store.path, 0.02)
    await store.open()
    svc = DnsService(cfg, store, CollectorRegistry())
    await svc.start()
    try:
        port = svc.bound[0][1]
        assert len(svc.pool.pids) == 2
        victim = svc.pool.workers[1].pid
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):  # bounded: the parent notices within a loop iteration
            if 1 not in svc.pool.workers:
                break
            await asyncio.sleep(0.02)
        assert f"dnsd worker 1 (pid {victim}) exited with signal SIGKILL" in caplog.text
        rcodes = [await asyncio.to_thread(ask_from_new_port, port, ZONE) for _ in range(40)]
        assert rcodes == [dns.rcode.NOERROR] * 40  # nothing lost to the dead socket
        for _ in range(150):  # bounded: restarted after ~1 s
            if svc.pool.restarts:
                break
            await asyncio.sleep(0.1)
        assert svc.pool.restarts == 1 and svc.pool.workers[1].pid not in (victim, 0)
        assert "dnsd worker 1 serving again" in caplog.text
    finally:
        pids = svc.pool.pids
        await svc.stop()
        await store.close()
    assert not any(alive(p) for p in pids)


def test_workers_count_in_parent_metrics_and_die_with_the_parent(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, dns={"workers": 2}, proxy={"workers": 2})
    doc = tomllib.loads(cfg.read_text())
    api = int(doc["api"]["listen"].rsplit(":", 1)[1])
    dns_port = int(doc["dns"]["listen"][0].rsplit(":", 1)[1])
    https = int(doc["proxy"]["https_listen"][0].rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{api}"
    with launched(cfg, "run") as proc:
        wait_http(url, proc, 60)

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            admin = (tmp_path / "admin.token").read_text().strip()
            req = urllib.request.Request(url + "/metrics",
                                         headers={"Authorization": f"Bearer {admin}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                fams = list(text_string_to_metric_families(r.read().decode()))
            names = [f.name for f in fams]
            assert len(names) == len(set(names)), names  # one family per name
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in fams for s in f.samples}

        a_ok = (("qtype", "A"), ("rcode", "NOERROR"), ("worker", "1"))
        bad = (("outcome", "handshake_failed"), ("worker", "1"))
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _ in range(40):  # bounded: ~20 s; the parent pulls workers' metrics every 1 s
            for _ in range(10):
                ask_from_new_port(dns_port, ZONE)
                with contextlib.suppress(OSError), \
                        socket.create_connection(("127.0.0.1", https), timeout=2) as c:
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    c.recv(100)
            samples = scrape()
            if samples.get(("webgateway_dns_queries_total", a_ok)) and \
                    samples.get(("webgateway_proxy_connections_total", bad)):
                break
            time.sleep(0.5)
        assert samples.get(("webgateway_dns_queries_total", a_ok)), samples
        assert samples.get(("webgateway_proxy_connections_total", bad)), samples
        assert ("webgateway_dns_queries_total", (*a_ok[:2], ("worker", "0"))) in samples

        kids = children(proc.pid)
        assert len(kids) >= 2  # a dnsd and a proxy worker (and multiprocessing's tracker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and any(alive(p) for p in kids):
            time.sleep(0.05)
        assert not [p for p in kids if alive(p)]


def test_proxy_workers_share_the_port_and_stop_with_the_parent(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, proxy={"https_listen": [f"127.0.0.1:{port}"],
                                        "http_listen": [f"127.0.0.1:{free_port()}"],
                                        "workers": 2})
    with launched(cfg, "proxy") as proc:
        pids: set[int] = set()
        for _ in range(200):  # bounded: up to ~20 s for both processes to bind
            pids = listeners(port)
            if len(pids) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert proc.pid in pids and len(pids) == 2
        worker = (pids - {proc.pid}).pop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        for _ in range(100):
            if not alive(worker):
                break
            time.sleep(0.1)
        assert not alive(worker)
        assert listeners(port) == set()
