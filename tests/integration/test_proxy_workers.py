"""``[proxy] workers = 2``: a second process shares the port (SO_REUSEPORT) and exits with us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.gateway import write_config
from tests.support import free_port


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


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_share_the_port_and_stop_with_the_parent(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, proxy={"https_listen": [f"127.0.0.1:{port}"],
                                        "http_listen": [f"127.0.0.1:{free_port()}"],
                                        "workers": 2})
    proc = subprocess.Popen([sys.executable, "-m", "webgateway.cli", "proxy", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
