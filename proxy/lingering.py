"""Closing a client we turn away without a reset, so it reads our last words.

Closing a socket with unread bytes in its receive buffer sends a TCP reset, and a reset
can overtake the alert or page just written. So: send, half-close, then read and drop
what the client still sends until it closes (bounded in bytes and time), then close.
"""

from __future__ import annotations

import asyncio
import socket

from proxy.engine import Engine


class Lingering:
    """Close a socket without a reset: read and drop until the peer closes (bounded)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, engine: Engine,
                 seconds: float = 2.0) -> None:
        self.loop, self.sock, self.engine = loop, sock, engine
        self.fd = sock.fileno()
        loop.add_reader(self.fd, self._read)
        self.timer = loop.call_later(seconds, self._close)
        self.budget = 64 * 1024
        engine.loose[self] = self._close

    def _read(self) -> None:
        try:
            data = self.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.budget -= len(data)
        if not data or self.budget <= 0:
            self._close()

    def _close(self) -> None:
        if self.fd < 0:
            return
        self.engine.loose.pop(self, None)
        self.loop.remove_reader(self.fd)
        self.timer.cancel()
        self.fd = -1
        self.sock.close()
        self.engine.closed()


def close_gently(loop: asyncio.AbstractEventLoop, sock: socket.socket, engine: Engine,
                 payload: bytes = b"") -> None:
    """Send ``payload`` (an alert), half-close, drain, close; counts the connection closed."""
    try:
        if payload:
            sock.send(payload)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        engine.closed()
        return
    Lingering(loop, sock, engine)
