"""The protocol of one tunnel connection, sans-IO: bytes in, events out; calls out, bytes.

A tunnel connection is TLS from the node to the gateway's :443 (ALPN ``ALPN``). It
carries frames ``kind:u8 length:u16 payload``, and one client connection (a *stream*) at
a time, as many streams one after the other as it lives::

    node                         gateway
    HELLO(label, token, session) ->
                                 <- ACCEPT | FULL | REFUSE(reason)
    PING ->  (every few seconds while idle)
                                 <- PONG
                                 <- OPEN, DATA...  (a client arrived for the name)
    DATA... | REFUSE(reason) ->  (the backend's bytes, or the node could not reach it)
    END ->                       <- END  (either side first: the stream is over)
    (idle again: PING/PONG, the next OPEN)

The gateway does not wait for an answer to OPEN: the client's first bytes follow it at
once, so a new stream costs no round trip through the two event loops. A REFUSE instead
of the node's first DATA still comes before any response byte, so the proxy can answer
the client with its 502 page.

Why frames and not raw bytes after OPEN (version 2): a raw stream can only end by
closing its connection, so every client used up one TLS connection and the node dialled
a replacement, a TLS handshake on both ends competing with the next streams for the CPU
(most of the tunnel's first-byte tail). With END a connection outlives its stream and
goes back to the pool. A DATA frame carries whatever one read gave the sender (up to
64 KiB per frame), so bulk transfers pay a 3-byte header per 64 KiB and the receiver
passes payload slices on without copying them.

END closes the stream in the sender's direction and says it reads no more: a side that
receives END answers END (after whatever it still had to send), and DATA arriving after
one's own END is dropped (it crossed the END on the wire). Once a side has sent and
received END the connection is idle again. Control frames are small and bounded
(``MAX_PAYLOAD``); anything else is a ``ProtocolError`` that the shell answers with
REFUSE and a close.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Never

from webgateway.dnsname import LABEL_FORM

ALPN: Final = "webgateway-tunnel/1"
VERSION: Final = 3
#: The largest control frame payload either side accepts (a HELLO is under 300 bytes).
MAX_PAYLOAD: Final = 512
#: The largest DATA frame payload (the length field's range).
MAX_DATA: Final = 0xFFFF
#: DATA payloads up to this size are copied behind their header (one buffer, one TLS
#: record); larger ones go out as header + the caller's buffer.
SMALL: Final = 16384
SESSION_BYTES: Final = 16
MAX_TOKEN: Final = 128
MAX_REASON: Final = 200
_HEADER: Final = struct.Struct("!BH")
_TOKEN: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN}}}")


class Kind(enum.IntEnum):
    HELLO = 1
    ACCEPT = 2
    REFUSE = 3
    PING = 4
    PONG = 5
    OPEN = 6
    # 7 was OPENED (version 2)
    FULL = 8  # the token is good, but the name's pool is full: do not dial again soon
    DATA = 9
    END = 10


class Role(enum.Enum):
    NODE = "node"
    GATEWAY = "gateway"

    # Members are singletons: hashed by identity (C), not ``Enum.__hash__`` (a Python
    # call per frame received, in ``_RECEIVE``'s key).
    __hash__ = object.__hash__


class State(enum.Enum):
    HELLO = "hello"  # node: before sending HELLO; gateway: waiting for it
    AUTH = "auth"  # node: HELLO sent; gateway: HELLO received, not answered yet
    IDLE = "idle"  # accepted, pooled, heartbeating
    STREAM = "stream"  # OPEN sent/received: DATA both ways until END both ways
    CLOSED = "closed"  # REFUSE sent or received, or a protocol error

    __hash__ = object.__hash__  # see Role


@dataclass(frozen=True)
class Liveness:
    """How an idle connection proves it is alive, on both sides.

    The node pings every ``ping_every``; each side checks every ``check_every`` and drops a
    connection it has not heard from for ``dead_after``: a silently dead peer (a NAT that
    forgot us, a cable pulled) is found within ``dead_after + check_every`` (25 s).
    """

    ping_every: float = 10.0
    dead_after: float = 20.0
    check_every: float = 5.0


LIVENESS: Final = Liveness()


class ProtocolError(ValueError):
    """The peer broke the protocol; the message says how (safe to log and to send)."""


@dataclass(frozen=True, slots=True)
class Hello:
    label: str
    token: str
    session: bytes  # random per node process: groups one node's connections

    def __repr__(self) -> str:  # never print the token
        return f"Hello(label={self.label!r}, session={self.session.hex()})"


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


@dataclass(frozen=True, slots=True)
class Signal:
    """A frame without payload: ACCEPT, FULL, PING, PONG or OPEN."""

    kind: Kind


ACCEPTED: Final = Signal(Kind.ACCEPT)
PING: Final = Signal(Kind.PING)
PONG: Final = Signal(Kind.PONG)
OPEN: Final = Signal(Kind.OPEN)
FULL: Final = Signal(Kind.FULL)
#: ``receive`` hands out these very objects (a shell may compare with ``is``).
_SIGNALS: Final = {s.kind: s for s in (ACCEPTED, PING, PONG, OPEN, FULL)}


@dataclass(frozen=True, slots=True)
class End:
    """The peer's END. ``last``: it answered ours, so the stream is over and the
    connection idle (frames of the next stream may follow in the same read: the shell
    must not ask the connection's state about this one)."""

    last: bool


END: Final = End(last=False)
ENDED: Final = End(last=True)


@dataclass(frozen=True, slots=True)
class Data:
    """Stream bytes: a slice of what ``receive`` was given (a memoryview when partial)."""

    data: bytes | memoryview


Event = Hello | Refused | Signal | End | Data


def valid_token(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def frame(kind: Kind, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(kind, len(payload)) + payload


def encode_hello(label: str, token: str, session: bytes) -> bytes:
    if not LABEL_FORM.fullmatch(label):
        raise ValueError(f"{label!r} is not a name label")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"a tunnel token is 1 to {MAX_TOKEN} printable ASCII characters")
    if len(session) != SESSION_BYTES:
        raise ValueError(f"a session id is {SESSION_BYTES} bytes")
    lb, tb = label.encode(), token.encode()
    return frame(Kind.HELLO, bytes((VERSION, len(lb))) + lb + bytes((len(tb),)) + tb + session)


def decode_hello(p: bytes) -> Hello:
    if len(p) < 2:
        raise ProtocolError("HELLO is too short")
    if p[0] != VERSION:
        raise ProtocolError(f"tunnel protocol version {p[0]} is not supported (want {VERSION}):"
                            " run the gateway's webgateway version on the node")
    n = p[1]
    label_end = 2 + n
    if len(p) < label_end + 1:
        raise ProtocolError("HELLO is too short")
    m = p[label_end]
    token_end = label_end + 1 + m
    if len(p) != token_end + SESSION_BYTES:
        raise ProtocolError("HELLO has the wrong length")
    try:
        label = p[2:label_end].decode("ascii")
        token = p[label_end + 1 : token_end].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("HELLO carries non-ASCII text") from None
    if not LABEL_FORM.fullmatch(label):
        raise ProtocolError("HELLO names no valid label")
    if not _TOKEN.fullmatch(token):
        raise ProtocolError("HELLO carries no valid token")
    return Hello(label, token, bytes(p[token_end:]))


def _reason(p: bytes) -> str:
    text = p[:MAX_REASON].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


# Which control frames each role may receive in each state, and the state they lead to.
# DATA and END are the stream's own (``Connection._stream_frame``).
#: Frame kinds by their number: ``Kind(n)`` is several Python calls per frame.
_KINDS: Final = {int(k): k for k in Kind}
_RECEIVE: Final[dict[tuple[Role, State], dict[int, State]]] = {
    (Role.GATEWAY, State.HELLO): {Kind.HELLO: State.AUTH},
    (Role.GATEWAY, State.IDLE): {Kind.PING: State.IDLE},
    # a PING may cross our OPEN on the wire; it is dropped
    (Role.GATEWAY, State.STREAM): {Kind.PING: State.STREAM, Kind.REFUSE: State.CLOSED},
    (Role.NODE, State.AUTH): {Kind.ACCEPT: State.IDLE, Kind.FULL: State.CLOSED,
                              Kind.REFUSE: State.CLOSED},
    (Role.NODE, State.IDLE): {Kind.PONG: State.IDLE, Kind.OPEN: State.STREAM,
                              Kind.FULL: State.CLOSED, Kind.REFUSE: State.CLOSED},
    (Role.NODE, State.STREAM): {Kind.REFUSE: State.CLOSED},
}


class Connection:
    """One side of one tunnel connection. Feed it bytes; ask it for bytes to send."""

    __slots__ = ("_buf", "_drop", "_left", "got_end", "role", "sent_end", "state")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.HELLO
        self._buf = bytearray()  # a frame header, or a control frame, not complete yet
        self._left = 0  # payload bytes of the current DATA frame still to come
        self._drop = False  # the current DATA frame crossed our END: not passed on
        self.sent_end = False
        self.got_end = False

    # ------------------------------------------------------------------ receiving
    def receive(self, data: bytes) -> list[Event]:
        """Events in ``data``; raises ``ProtocolError`` (state becomes CLOSED).

        The payloads of DATA frames that follow each other in ``data`` come out as one
        ``Data`` while they are small (``_JOIN``): a response's head and body, sent as two
        frames, then reach the client in one write, not two small ones (which Nagle's
        algorithm would hold back until the client's delayed ACK: up to 40 ms).
        """
        n = len(data)
        payload = self.one_data(data)
        if payload is not None:
            return [Data(payload)] if payload else []
        events: list[Event] = []
        parts: list[bytes | memoryview] = []
        pos = 0
        buf = self._buf
        while pos < n and self.state is not State.CLOSED:
            left = self._left
            if left:  # inside a DATA frame: pass its bytes on as they are
                take = min(left, n - pos)
                if not self._drop:
                    parts.append(data if take == n else data[pos:pos + take] if take <= SMALL
                                 else memoryview(data)[pos:pos + take])
                self._left = left - take
                pos += take
                continue
            have = len(buf)
            if have < _HEADER.size:
                take = min(_HEADER.size - have, n - pos)
                buf += data[pos:pos + take]
                pos += take
                if len(buf) < _HEADER.size:
                    break
                kind, length = _HEADER.unpack(buf)
                if kind == Kind.DATA:
                    buf.clear()
                    self._data_frame(length)
                    continue
                if length > MAX_PAYLOAD:
                    self._fail(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
            kind, length = _HEADER.unpack_from(buf)
            want = _HEADER.size + length - len(buf)
            take = min(want, n - pos)
            buf += data[pos:pos + take]
            pos += take
            if take < want:
                break
            payload = bytes(buf[_HEADER.size:])
            buf.clear()
            ev = self._frame(kind, payload)
            if ev is not None:
                if parts:
                    _flush(parts, events)
                events.append(ev)
        if parts:
            _flush(parts, events)
        return events

    def one_data(self, data: bytes) -> bytes | None:
        """The payload when ``data`` is exactly one DATA frame of the stream (the usual
        read; b"" when it crossed our END), else None: then ``receive`` it."""
        n = len(data)
        if (n > _HEADER.size and data[0] == Kind.DATA and not self._left and not self._buf
                and self.state is State.STREAM and not self.got_end
                and (data[1] << 8 | data[2]) == n - _HEADER.size):
            return b"" if self.sent_end else data[_HEADER.size:]
        return None

    def _data_frame(self, length: int) -> None:
        if self.state is not State.STREAM:
            self._fail(f"DATA is not expected by the {self.role.value} in state "
                       f"{self.state.value}")
        if self.got_end:
            self._fail("DATA after END")
        if not length:
            self._fail("an empty DATA frame")
        self._left = length
        self._drop = self.sent_end

    def _frame(self, kind: int, payload: bytes) -> Event | None:
        k = _KINDS.get(kind)
        if k is None:
            self._fail(f"unknown frame kind {kind}")
        if k is Kind.END and self.state is State.STREAM:
            return self._end_frame(payload)
        after = _RECEIVE.get((self.role, self.state), {}).get(kind)  # by number: no enum hash
        if after is None:
            self._fail(f"{k.name} is not expected by the {self.role.value} in state "
                       f"{self.state.value}")
        if k is Kind.PING and self.state is State.STREAM:
            return None
        if k is Kind.HELLO:
            try:
                ev: Event = decode_hello(payload)
            except ProtocolError:
                self.state = State.CLOSED
                raise
        elif k is Kind.REFUSE:
            ev = Refused(_reason(payload))
        elif payload:
            self._fail(f"{k.name} carries no payload")
        else:
            ev = _SIGNALS[k]
        self.state = after
        if k is Kind.OPEN:
            self.sent_end = self.got_end = False
        return ev

    def _end_frame(self, payload: bytes) -> Event:
        if self.got_end:
            self._fail("END twice")
        if payload:
            self._fail("END carries no payload")
        self.got_end = True
        if self.sent_end:
            self.state = State.IDLE
            return ENDED
        return END

    def _fail(self, reason: str) -> Never:
        self.state = State.CLOSED
        self._buf.clear()
        self._left = 0
        raise ProtocolError(reason)

    # ------------------------------------------------------------------ sending
    def _expect(self, role: Role | None, *states: State) -> None:
        if (role is not None and self.role is not role) or self.state not in states:
            raise RuntimeError(f"the {self.role.value} cannot do that in state {self.state.value}")

    def hello(self, label: str, token: str, session: bytes) -> bytes:
        self._expect(Role.NODE, State.HELLO)
        out = encode_hello(label, token, session)
        self.state = State.AUTH
        return out

    def accept(self) -> bytes:
        self._expect(Role.GATEWAY, State.AUTH)
        self.state = State.IDLE
        return frame(Kind.ACCEPT)

    def full(self) -> bytes:
        """The gateway keeps no more idle connections of this name (before or after ACCEPT)."""
        self._expect(Role.GATEWAY, State.AUTH, State.IDLE)
        self.state = State.CLOSED
        return frame(Kind.FULL)

    def ping(self) -> bytes:
        self._expect(Role.NODE, State.IDLE)
        return frame(Kind.PING)

    def pong(self) -> bytes:
        self._expect(Role.GATEWAY, State.IDLE)
        return frame(Kind.PONG)

    def open(self, first: Sequence[bytes] = ()) -> bytes:
        """OPEN, followed in the same buffer by DATA frames carrying ``first`` (the
        client's bytes already read): one write, one TLS record, one read at the node."""
        self._expect(Role.GATEWAY, State.IDLE)
        self.state = State.STREAM
        self.sent_end = self.got_end = False
        if not first:
            return frame(Kind.OPEN)
        out: list[bytes | memoryview] = [frame(Kind.OPEN)]
        for data in first:
            out += self.data(data)
        return b"".join(out)

    def data(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """DATA frames carrying ``data`` (a small payload shares one buffer with its header,
        a large one is not copied); nothing once END is sent."""
        if self.state is not State.STREAM:
            raise RuntimeError(f"the {self.role.value} cannot send DATA in state "
                               f"{self.state.value}")
        n = len(data)
        if self.sent_end or not n:
            return []
        if n <= SMALL:
            return [data_frame(data)]
        view = memoryview(data)
        out: list[bytes | memoryview] = []
        for i in range(0, n, MAX_DATA):
            part = view[i:i + MAX_DATA]
            out += (_HEADER.pack(Kind.DATA, len(part)), part)
        return out

    def end(self) -> bytes:
        """END of the stream from this side (b"" if already sent); idle again if the peer's
        END came first."""
        self._expect(None, State.STREAM)
        if self.sent_end:
            return b""
        self.sent_end = True
        if self.got_end:
            self.state = State.IDLE
        return frame(Kind.END)

    def refuse(self, reason: str) -> bytes:
        """REFUSE with a reason, and the connection is done."""
        self.state = State.CLOSED
        self._buf.clear()
        self._left = 0
        return frame(Kind.REFUSE, reason.encode("utf-8")[:MAX_REASON])


def data_frame(data: bytes | memoryview) -> bytes:
    """One DATA frame, header and payload in one buffer (1 to ``SMALL`` bytes)."""
    return _HEADER.pack(Kind.DATA, len(data)) + data


#: Consecutive DATA payloads of one read are joined into one ``Data`` up to this size.
_JOIN: Final = 65536


def _flush(parts: list[bytes | memoryview], events: list[Event]) -> None:
    if len(parts) > 1 and sum(map(len, parts)) <= _JOIN:
        events.append(Data(b"".join(parts)))
    else:
        events.extend(map(Data, parts))
    parts.clear()
