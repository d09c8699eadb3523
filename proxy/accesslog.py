"""The proxy's access log: one JSON line per client connection, written without stalling.

``entry`` is pure: the values of one finished connection in, one line of bytes out.
``AccessLog`` collects lines in memory and writes them with one ``os.write`` when 64 KiB
have gathered or a second after the first unwritten line, so a connection costs the
event loop a ``json.dumps`` and a list append, and a line is never split between two
writes (worker processes append to the same file). When the file is renamed away (log
rotation), the next write reopens the path.

Only what the proxy saw in the clear goes in: addresses, the server name, the route, byte
counts. Nothing of the TLS payload, no token, no header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Final

from webgateway.addresses import HostPort
from webgateway.config import STDOUT, ConfigError
from webgateway.when import rfc3339_ms

log = logging.getLogger(__name__)

FLUSH_BYTES: Final = 64 * 1024
FLUSH_DELAY: Final = 1.0


def entry(*, now: float, client: tuple[str, int], sni: str | None, route: str | None,
          mode: str | None, backend: str | None, bytes_in: int, bytes_out: int,
          duration: float, outcome: str, reason: str | None = None,
          host: str | None = None) -> bytes:
    """One access-log line. ``bytes_in`` came from the client, ``bytes_out`` went to it;
    ``host`` (port 80's Host header, the name it routes by there) only on port-80 lines."""
    line = {
        "time": rfc3339_ms(now),
        "client": client[0],
        "client_port": client[1],
        "sni": sni,
        "route": route,
        "mode": mode,
        "backend": backend,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration": round(duration, 6),
        "outcome": outcome,
    }
    if reason is not None:
        line["reason"] = reason
    if mode == "http":
        line["host"] = host
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


class AccessLog:
    """Appends lines to ``path`` (``STDOUT``: file descriptor 1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd = -1
        self._ino = 0
        self._backends: dict[HostPort, str] = {}
        self._open()

    def _open(self) -> None:
        if self.path == STDOUT:
            self._fd = 1
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise ConfigError("log.access_log", f"cannot open {self.path}: {e.strerror}") from None
        self._fd, self._ino = fd, os.fstat(fd).st_ino

    def record(self, *, client: tuple[str, int], sni: str | None, route: str | None,
               mode: str | None, backend: HostPort | None, bytes_in: int, bytes_out: int,
               duration: float, outcome: str, reason: str | None,
               host: str | None = None) -> None:
        """Write the line of one finished connection (see ``entry``)."""
        self.write(entry(now=time.time(), client=client, sni=sni, route=route, mode=mode,
                         backend=self._backend(backend) if backend is not None else None,
                         bytes_in=bytes_in, bytes_out=bytes_out, duration=duration,
                         outcome=outcome, reason=reason, host=host))

    def _backend(self, b: HostPort) -> str:
        """``str(HostPort)`` costs microseconds (IPv6 formatting): remembered, bounded."""
        text = self._backends.get(b)
        if text is None:
            if len(self._backends) >= 10_000:
                self._backends.clear()
            text = self._backends[b] = str(b)
        return text

    def write(self, line: bytes) -> None:
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        self._reopen_if_rotated()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:  # a full disk must not take the proxy down: lose the lines
            log.warning("access log %s: %d bytes lost: %s", self.path, len(view), e.strerror)

    def _reopen_if_rotated(self) -> None:
        if self.path == STDOUT:
            return
        try:
            same = os.stat(self.path).st_ino == self._ino
        except OSError:
            same = False
        if not same:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            try:
                self._open()
            except ConfigError as e:
                log.warning("access log: %s", e.reason)
                self._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                self._ino = -1

    def close(self) -> None:
        self.flush()
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1

