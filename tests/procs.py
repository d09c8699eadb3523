"""Background processes for tests: started with their own process group, stopped by PID.

Every wait is bounded; a process that dies early fails the test with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query


class Proc:
    def __init__(self, name: str, cmd: Sequence[str], log: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 user: str | None = None) -> None:
        self.name = name
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(cmd), stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
            user=user, group=user, extra_groups=[] if user else None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10) -> int:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)  # its own session: PGID == PID
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(wait)
        self._logf.close()
        return int(self.popen.returncode)


def wait_tcp(host: str, port: int, proc: Proc | None = None, seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc is not None:
            proc.check()
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {seconds} s")


def wait_dns(host: str, port: int, qname: str, proc: Proc | None = None,
             seconds: float = 20, rdtype: str = "SOA") -> dns.message.Message:
    """Wait until a UDP query gets any answer; returns it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc is not None:
            proc.check()
        with contextlib.suppress(OSError, dns.exception.DNSException):
            return dns.query.udp(dns.message.make_query(qname, rdtype), host, port=port,
                                 timeout=0.5)
        time.sleep(0.05)
    raise AssertionError(f"no DNS answer from {host}:{port} for {qname} after {seconds} s")


def ask_from_new_port(port: int, qname: str, timeout: float = 2.0, *,
                      rdtype: str = "A") -> int | None:
    """One UDP query from a fresh source port (so ``SO_REUSEPORT`` may pick any process);
    its rcode, or None without an answer."""
    m = dns.message.make_query(qname, rdtype, use_edns=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(m.to_wire(), ("127.0.0.1", port))
        try:
            return int(dns.message.from_wire(s.recv(4096)).rcode())
        except TimeoutError:
            return None


def alive(pid: int) -> bool:
    """Running, neither gone nor a zombie (which holds no socket any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
