"""The byte pump: two asyncio Protocols joined back to back, with flow control.

Each side writes what it reads into the other's transport. When a transport's write
buffer passes its high-water mark, asyncio calls ``pause_writing`` on that side, which
pauses *reading* on the other side; so a slow client stalls the backend read instead
of the proxy buffering a whole response. Memory per connection is bounded by the two
write-buffer limits plus one read chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from webgateway.addresses import HostPort

#: Write-buffer high-water mark per transport (low is a quarter of it).
HIGH_WATER: Final = 256 * 1024
#: Bytes a side may hold while its peer is not connected yet.
PENDING_LIMIT: Final = 64 * 1024


class Half(asyncio.Protocol):
    """One connection of a spliced pair."""

    __slots__ = ("closed", "eof", "half_close", "nbytes", "paused", "peer", "pending", "splice",
                 "transport")

    def __init__(self, splice: Splice) -> None:
        self.splice: Splice | None = splice  # None once the pair is done (no cycle left)
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.pending: list[bytes] = []
        self.eof = False
        self.closed = False
        self.paused = False
        self.half_close = True  # False for TLS: its transports close on EOF anyway
        self.nbytes = 0  # read from this side (the access log and per-name metrics)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (and ours) are not asyncio.Transport subclasses, only look-alikes.
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, HIGH_WATER // 4)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        sp = self.splice
        if sp is not None:
            sp.activity += 1
        self.nbytes += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if not peer.closed:
                peer.transport.write(data)
            return
        self.pending.append(data)
        if sum(map(len, self.pending)) > PENDING_LIMIT and self.transport is not None:
            self._pause()

    def eof_received(self) -> bool | None:
        self.eof = True
        return self.splice.on_eof(self) if self.splice is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.splice is not None:
            self.splice.on_lost(self)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer._pause()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer._resume()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class PairState:
    """What every client-backend pair carries, however its bytes move (``Splice`` here, the
    flat ``proxy.pair.Pair``): what its access-log line will say, its claim on its name's
    cap, its traffic count, and its idle timeout (two ticks of half the timeout with no
    ``activity``, and it is aborted)."""

    __slots__ = ("_idle", "_seen", "_strikes", "_timer", "activity", "backend_addr",
                 "client_addr", "counted", "label", "linked", "loop", "mode", "outcome",
                 "reason", "release", "route", "sni", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float) -> None:
        self.loop = loop
        self.backend_addr: HostPort | None = None
        self.label: str | None = None  # the name it is counted against, once claimed
        #: called once when the pair is done (a tunnel stream returns its slot)
        self.release: Callable[[], None] | None = None
        # What the access log says when the pair is done (set by the dispatcher).
        self.client_addr: tuple[str, int] = ("", 0)
        self.started = 0.0
        self.sni: str | None = None
        self.mode: str | None = None
        self.route: str | None = None
        self.outcome = "client_closed"
        self.reason: str | None = None
        self.linked = False
        self.counted = (0, 0)  # bytes in and out already added to the name's series
        self.activity = 0
        self._seen = -1
        self._strikes = 0
        self._idle = idle_timeout
        self._timer: asyncio.TimerHandle | None = None

    def carried(self) -> tuple[int, int]:
        """Bytes read from the client, and from the backend, so far."""
        raise NotImplementedError

    def held(self) -> int:
        """Bytes the proxy holds for this pair now (bounded by its flow control)."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def _watch_idle(self) -> None:
        self._timer = self.loop.call_later(self._idle / 2, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._still_active():
            self._watch_idle()

    def _still_active(self) -> bool:
        """One tick of the idle timeout: False (and aborted) after two ticks without
        activity."""
        if self.activity == self._seen:
            self._strikes += 1
            if self._strikes >= 2:
                self.outcome = "idle_timeout"
                self.abort()
                return False
        else:
            self._strikes = 0
            self._seen = self.activity
        return True


class Splice(PairState):
    """A client connection and its backend connection, as asyncio transports (any: a
    tunnel stream is one), and what ends them."""

    __slots__ = ("_done", "_on_done", "backend", "client")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        on_done: Callable[[Splice], None],
    ) -> None:
        super().__init__(loop, idle_timeout)
        self.client = Half(self)
        self.backend = Half(self)
        self._on_done = on_done
        self._done = False
        self._watch_idle()

    def carried(self) -> tuple[int, int]:
        return self.client.nbytes, self.backend.nbytes

    def held(self) -> int:
        return sum(h.transport.get_write_buffer_size() for h in (self.client, self.backend)
                   if h.transport is not None)

    def link(self) -> None:
        """Both sides are connected: flush what waited and start pumping."""
        c, b = self.client, self.backend
        c.peer, b.peer = b, c
        self.linked, self.outcome = True, "ok"
        for src, dst in ((c, b), (b, c)):
            if dst.transport is None or dst.closed:
                continue
            if src.pending:
                dst.transport.writelines(src.pending)
                src.pending.clear()
            src._resume()
            if src.eof:
                self.on_eof(src)
        if c.closed or b.closed:
            self.on_lost(c if c.closed else b)

    def on_eof(self, side: Half) -> bool:
        other = side.peer
        if other is None:
            # Not linked yet: link() forwards the EOF. A TLS transport cannot stay open
            # after EOF, and saying True there only earns a warning.
            return side.half_close
        if other.closed or other.transport is None:
            return False
        if other.eof or not other.transport.can_write_eof():
            other.close()
            return False
        other.transport.write_eof()
        return side.half_close  # half-close: keep reading the other direction

    def on_lost(self, side: Half) -> None:
        other = self.backend if side is self.client else self.client
        if other.transport is not None and not other.closed:
            other.close()  # flushes what is buffered, then closes
        if ((self.client.closed or self.client.transport is None) and (
            self.backend.closed or self.backend.transport is None
        )) or other.transport is None:
            self.finish()

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_done(self)
        self._untie()

    def _untie(self) -> None:
        """Drop the references that make the pair a cycle (pair <-> halves, half <-> half),
        so that reference counting frees a finished connection at once: cycles leave it to
        the garbage collector, whose passes then run every few connections and, once the
        survivors pile up, scan the whole heap (14-27 ms, measured in the gateway)."""
        for half in (self.client, self.backend):
            half.splice = half.peer = None

    def cancel(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._untie()

    def abort(self) -> None:
        self.client.abort()
        self.backend.abort()
