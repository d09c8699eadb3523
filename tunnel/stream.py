"""One stream over a pooled tunnel connection, as the transport the splice pumps into.

Both ends give the proxy's splice (``proxy.splice.Half``) a ``Stream`` in place of a
socket transport: writes become DATA frames on the tunnel connection, ``close`` becomes
END, and the frames the connection's protocol (``TunnelConn``, ``NodeConn``) reads are
handed in with ``received`` and ``ended``. Once END went both ways the stream tells its
owner (``done``), which puts the connection back in the pool, and then tells the splice
the stream is lost, as a closed socket would. ``abort``, or any failure of the
connection, closes the whole tunnel connection: an unclean end never returns a
connection whose peer may still be mid-stream.

Flow control is the connection's own: pausing reading pauses the TLS transport, and its
``pause_writing`` reaches the splice through the owner (``pause_writing``). A stream
that sent END waits at most ``END_WAIT`` for the peer's (dropping what crosses it), then
gives the connection up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Final

from tunnel import wire

#: Longest a stream that sent END waits for the peer's END before closing the connection.
END_WAIT: Final = 10.0
#: The protocol of a stream that is over: whatever still reaches it is dropped.
_GONE: Final = asyncio.Protocol()


class Stream:
    """The splice's transport for one stream; ``owner`` is the connection's protocol."""

    __slots__ = ("_done", "_paused", "_timer", "conn", "done", "protocol", "transport")

    def __init__(self, conn: wire.Connection, transport: asyncio.Transport,
                 protocol: asyncio.Protocol, done: Callable[[], None]) -> None:
        self.conn = conn
        self.transport = transport
        self.protocol = protocol
        self.done = done  # END both ways: the owner takes its connection back
        self._done = False
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ the splice's side
    def write(self, data: bytes | memoryview) -> None:
        conn = self.conn
        if self._done or conn.state is not wire.State.STREAM or conn.sent_end or not data:
            return
        if len(data) <= wire.SMALL:
            self.transport.write(wire.data_frame(data))  # the usual write: one frame
        else:
            self.transport.writelines(conn.data(data))

    def writelines(self, chunks: Iterable[bytes | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return False  # END closes both directions: the splice closes the stream instead

    def write_eof(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._done or self.conn.sent_end or self.transport.is_closing()

    def close(self) -> None:
        """END after what is queued; then wait for the peer's (bounded)."""
        if self._done or self.conn.state is not wire.State.STREAM:
            return
        end = self.conn.end()
        if end:
            self.transport.write(end)
        self.resume_reading()  # the peer's END must get through
        if self._over():
            self._finish()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(END_WAIT, self._no_end)

    def _no_end(self) -> None:
        self._timer = None
        if not self._done:
            self.transport.abort()

    def abort(self) -> None:
        if not self._done:
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._paused and not self._done:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    # ------------------------------------------------------------------ the owner's side
    def ended(self, last: bool) -> None:
        """The peer's END: the splice sees an EOF (and closes us), or we were done too
        (``last``: the connection may have moved on to the next stream already)."""
        if last:
            self._finish()
        elif not self.protocol.eof_received():
            self.close()

    def lost(self, exc: Exception | None) -> None:
        """The tunnel connection closed under the stream."""
        if not self._done:
            self._done = True
            self._cancel()
            self._let_go(exc)

    def _over(self) -> bool:
        """END went both ways."""
        return self.conn.state is wire.State.IDLE

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._cancel()
        self.resume_reading()
        self.done()
        self._let_go(None)

    def _let_go(self, exc: Exception | None) -> None:
        """Tell the protocol the stream is lost, and drop it: it refers to us as its
        transport, and the cycle would leave both to the garbage collector."""
        protocol, self.protocol = self.protocol, _GONE
        protocol.connection_lost(exc)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Carrier(asyncio.Protocol):
    """The protocol of a tunnel connection (either end): its flow control is its stream's.

    Its transport is a ``proxy.tlssocket.TlsSocket`` (OpenSSL on the socket, one TLS record
    per read). The usual read of a stream, one whole DATA frame, goes straight to the
    stream; anything else to the subclass's ``received`` (the frame parser).
    """

    __slots__ = ()
    stream: Stream | None
    conn: wire.Connection

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None:
            payload = self.conn.one_data(data)
            if payload is not None:
                if payload:
                    self.passed(stream, payload)
                return
        self.received(data)

    def received(self, data: bytes) -> None:
        """Bytes that are not one DATA frame of the stream: parse them."""
        raise NotImplementedError

    def stream_event(self, ev: wire.Event) -> bool:
        """Handle ``ev`` if it is the stream's (DATA or END); False for the rest."""
        stream = self.stream
        if type(ev) is wire.Data:
            if stream is not None:
                self.passed(stream, ev.data)  # type: ignore[arg-type]
            return True
        if type(ev) is wire.End:
            if stream is not None:
                stream.ended(ev.last)
            return True
        return False

    def passed(self, stream: Stream, data: bytes) -> None:
        """Stream bytes from the peer go to the stream's protocol."""
        stream.protocol.data_received(data)

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.protocol.pause_writing()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.protocol.resume_writing()
