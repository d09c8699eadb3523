"""Readiness of the proxy's connection sockets: one epoll of their own, watched by the loop.

uvloop's ``add_reader``/``add_writer`` cost libuv a poll handle per descriptor and two
``epoll_ctl`` per change of interest (``uv_poll_start`` drops the descriptor from epoll
and adds it back), plus Python handle objects per registration: strace counted 14
``epoll_ctl``, 3 ``ioctl`` and 3 ``io_uring_enter`` per proxied connection where nginx
makes 2 ``epoll_ctl``. As nginx does, a plain socket here is registered once,
edge-triggered (writability added once, the first time a write would block); a TLS one
level-triggered, changed only when a write would block or reading pauses. Closing a
socket drops it from the epoll. The loop
watches the epoll's own descriptor and ``Readiness`` hands each event to the socket's
owner, which must then read (or write) until the socket would block: an edge is not
repeated. An owner may get an event that finds nothing to do (a descriptor number reused
within one batch); every read and write here is non-blocking, so that costs one syscall.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Final

#: Edge-triggered reading (plain TCP: a short read proves the socket drained, as nginx
#: reads it); writability is added once a write would block (a fresh socket is writable:
#: asked from the start, that would be an event at registration that finds nothing to do).
EDGE: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
EDGE_WRITES: Final = EDGE | select.EPOLLOUT
#: Level-triggered (TLS: a record read says nothing of the records behind it, and reading
#: until OpenSSL says "want read" costs a syscall and an exception per wake-up).
LEVEL_READS: Final = select.EPOLLIN | select.EPOLLRDHUP
LEVEL_WRITES: Final = select.EPOLLOUT
#: Events that mean "try to read" (data, the peer's FIN, an error or hang-up to report).
READABLE: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP
#: Events that mean "try to write" (or learn why not).
WRITABLE: Final = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
#: The peer has ended its stream, or the socket failed: read on, to EOF or the error.
ENDED: Final = select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP
#: The socket failed (a connect that did not succeed reports these with EPOLLOUT; one
#: that did, EPOLLOUT alone: ``SO_ERROR`` need not be asked then).
BROKEN: Final = select.EPOLLERR | select.EPOLLHUP
#: Events handed out per poll (more wait for the next one).
BATCH: Final = 256
#: Polls per wake-up of the loop: the loop's other callbacks (timers, the listeners) must
#: not wait behind a busy epoll for long.
REPOLLS: Final = 2


class Readiness:
    __slots__ = ("_ep", "_owners", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ep = select.epoll()
        self._owners: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self._ep.fileno(), self._ready)

    def watch(self, fd: int, owner: Callable[[int], None], mask: int) -> None:
        """Register ``fd``: ``owner(events)`` from now on (events already due come at once)."""
        self._ep.register(fd, mask)
        self._owners[fd] = owner

    def modify(self, fd: int, mask: int) -> None:
        """Watch ``fd`` for ``mask`` from now on (what is due already comes at once)."""
        self._ep.modify(fd, mask)

    def hand_over(self, fd: int, owner: Callable[[int], None]) -> None:
        """A watched ``fd`` changes owner (no syscall)."""
        self._owners[fd] = owner

    def forget(self, fd: int) -> None:
        """Before ``fd`` is closed (which drops it from the epoll)."""
        self._owners.pop(fd, None)

    def _ready(self) -> None:
        """Hand out what is ready, then look once more: what the callbacks made ready (a
        backend connect that completed meanwhile, a quick answer) is handled now, not
        after another turn of the loop and its ``epoll_pwait``."""
        owners, poll = self._owners, self._ep.poll
        for _ in range(REPOLLS):
            ready = poll(0, BATCH)
            if not ready:
                return
            for fd, events in ready:
                owner = owners.get(fd)
                if owner is not None:
                    owner(events)

    def close(self) -> None:
        if not self._ep.closed:
            self.loop.remove_reader(self._ep.fileno())
            self._ep.close()
            self._owners.clear()
