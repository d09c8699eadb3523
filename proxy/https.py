"""The HTTPS listener: accept in batches, then peek at each ClientHello and dispatch it.

The accept callback takes one connection per readiness of the listener, as nginx does
without ``multi_accept``: the listener is level-triggered, so a backlog is drained over
the loop's next turns, and the common single arrival costs no failing ``accept`` (a
syscall and an exception). It counts the connection against the proxy's limit and
peeks at its ClientHello (``peek``); a complete hello goes to the ``Dispatcher``
(``dispatch``), which terminates or passes it through. When the process runs out of
descriptors, accepting pauses for a second instead of spinning on a listener that
stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

from proxy import clienthello as ch
from proxy.dispatch import Dispatcher
from proxy.engine import Engine
from proxy.peek import peek_accepted

log = logging.getLogger(__name__)


class HttpsListener:
    def __init__(self, engine: Engine, sock: socket.socket) -> None:
        self.engine = engine
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.dispatcher = Dispatcher(engine)
        self.fd = sock.fileno()
        self.family = int(sock.family)
        self.loop.add_reader(self.fd, self._accept)
        self._paused: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
        else:
            self.loop.remove_reader(self.fd)
        self.sock.close()

    def _resume_accept(self) -> None:
        self._paused = None
        self.loop.add_reader(self.fd, self._accept)

    def _accept(self) -> None:
        engine = self.engine
        try:
            # ``socket.accept`` converts the listener's family and type to enums and asks
            # the default timeout for every connection; the fd is made into a socket here.
            fd, addr = self.sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("accept paused for 1 s: %s", e)
                self.loop.remove_reader(self.fd)
                self._paused = self.loop.call_later(1.0, self._resume_accept)
            return
        conn = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        if not admitted(engine, conn, addr, self.loop.time()):
            return
        conn.setblocking(False)  # its transport sets TCP_NODELAY when it adopts it
        peek_accepted(engine, self.dispatcher.dispatch, conn, addr)


def admitted(engine: Engine, conn: socket.socket, addr: tuple[str, int],
             started: float) -> bool:
    """Count a new client against the proxy's limit; over it, close it (False)."""
    if engine.opened():
        return True
    engine.finish("over_limit", addr, started)
    with contextlib.suppress(OSError):
        conn.recv(ch.MAX_PEEK, socket.MSG_DONTWAIT)  # unread bytes => RST
    conn.close()
    return False
