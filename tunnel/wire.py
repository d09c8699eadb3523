"""The protocol of one tunnel connection, sans-IO: bytes in, events out; calls out, bytes.

A tunnel connection is TLS from the node to the gateway's :443 (ALPN ``ALPN``). Inside,
a few frames ``kind:u8 length:u16 payload`` set it up, then it turns into a raw byte
stream carrying exactly one client connection::

    node                         gateway
    HELLO(label, token, session) ->
                                 <- ACCEPT | FULL | REFUSE(reason)
    PING ->  (every few seconds while idle)
                                 <- PONG
                                 <- OPEN + raw bytes (a client arrived for the name)
    OPENED | REFUSE(reason) ->   (the node connected to its backend, or could not)
    raw bytes <-> raw bytes      (PROXY v2 header first when the name asks for it)

The gateway does not wait for OPENED: the client's first bytes follow OPEN at once, so a
new stream costs no round trip through the two event loops (version 2; version 1 waited).
After OPEN the gateway sends only raw bytes, and the node sends nothing after OPENED but
raw bytes, so neither side ever has to tell a frame from data; until OPENED the gateway
still reads frames, so a REFUSE (the node cannot reach its backend) comes before any
response byte and the proxy can still answer the client with its 502 page. Frames are
small and bounded (``MAX_PAYLOAD``); anything else is a ``ProtocolError`` that the shell
answers with REFUSE and a close.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import Final, Never

from webgateway.dnsname import LABEL_FORM

ALPN: Final = "webgateway-tunnel/1"
VERSION: Final = 2
#: The largest frame payload either side accepts (a HELLO is under 300 bytes).
MAX_PAYLOAD: Final = 512
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
    OPENED = 7
    FULL = 8  # the token is good, but the name's pool is full: do not dial again soon


class Role(enum.Enum):
    NODE = "node"
    GATEWAY = "gateway"


class State(enum.Enum):
    HELLO = "hello"  # node: before sending HELLO; gateway: waiting for it
    AUTH = "auth"  # node: HELLO sent; gateway: HELLO received, not answered yet
    IDLE = "idle"  # accepted, pooled, heartbeating
    OPENING = "opening"  # OPEN sent/received, OPENED not yet (the node reads raw bytes)
    RAW = "raw"  # a byte stream from now on
    CLOSED = "closed"  # REFUSE sent or received, or a protocol error


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
    """A frame without payload: ACCEPT, FULL, PING, PONG, OPEN or OPENED."""

    kind: Kind


ACCEPTED: Final = Signal(Kind.ACCEPT)
PING: Final = Signal(Kind.PING)
PONG: Final = Signal(Kind.PONG)
OPEN: Final = Signal(Kind.OPEN)
OPENED: Final = Signal(Kind.OPENED)
FULL: Final = Signal(Kind.FULL)


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


Event = Hello | Refused | Signal | Data


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


# Which frames each role may receive in each state, and the state they lead to.
_RECEIVE: Final[dict[tuple[Role, State], dict[Kind, State]]] = {
    (Role.GATEWAY, State.HELLO): {Kind.HELLO: State.AUTH},
    (Role.GATEWAY, State.IDLE): {Kind.PING: State.IDLE},
    # a PING may cross our OPEN on the wire; it is dropped
    (Role.GATEWAY, State.OPENING): {Kind.PING: State.OPENING, Kind.OPENED: State.RAW,
                                    Kind.REFUSE: State.CLOSED},
    (Role.NODE, State.AUTH): {Kind.ACCEPT: State.IDLE, Kind.FULL: State.CLOSED,
                              Kind.REFUSE: State.CLOSED},
    (Role.NODE, State.IDLE): {Kind.PONG: State.IDLE, Kind.OPEN: State.OPENING,
                              Kind.REFUSE: State.CLOSED},
}


class Connection:
    """One side of one tunnel connection. Feed it bytes; ask it for bytes to send."""

    __slots__ = ("_buf", "role", "state")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.HELLO
        self._buf = bytearray()

    # ------------------------------------------------------------------ receiving
    def _raw_in(self) -> bool:
        """Whether what arrives now is the stream's bytes, not frames."""
        return self.state is State.RAW or (self.state is State.OPENING
                                           and self.role is Role.NODE)

    def _framing(self) -> bool:
        return not self._raw_in() and self.state is not State.CLOSED

    def receive(self, data: bytes) -> list[Event]:
        """Events in ``data``; raises ``ProtocolError`` (state becomes CLOSED)."""
        if self._raw_in():
            return [Data(data)] if data else []
        if self.state is State.CLOSED:
            return []
        self._buf += data
        events: list[Event] = []
        while self._framing() and len(self._buf) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buf)
            if length > MAX_PAYLOAD:
                self._fail(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
            if len(self._buf) < _HEADER.size + length:
                break
            payload = bytes(self._buf[_HEADER.size : _HEADER.size + length])
            del self._buf[: _HEADER.size + length]
            ev = self._frame(kind, payload)
            if ev is not None:
                events.append(ev)
        if self._raw_in() and self._buf:  # the frames above may have changed the state
            events.append(Data(bytes(self._buf)))
            self._buf.clear()
        elif len(self._buf) > _HEADER.size + MAX_PAYLOAD:
            self._fail("too many bytes before the connection was opened")
        return events

    def _frame(self, kind: int, payload: bytes) -> Event | None:
        allowed = _RECEIVE.get((self.role, self.state), {})
        try:
            k = Kind(kind)
        except ValueError:
            self._fail(f"unknown frame kind {kind}")
        if k not in allowed:
            self._fail(f"{k.name} is not expected by the {self.role.value} in state "
                       f"{self.state.value}")
        if k is Kind.PING and self.state is State.OPENING:
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
            ev = Signal(k)
        self.state = allowed[k]
        return ev

    def _fail(self, reason: str) -> Never:
        self.state = State.CLOSED
        self._buf.clear()
        raise ProtocolError(reason)

    # ------------------------------------------------------------------ sending
    def _expect(self, role: Role, *states: State) -> None:
        if self.role is not role or self.state not in states:
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
        self._expect(Role.GATEWAY, State.AUTH)
        self.state = State.CLOSED
        return frame(Kind.FULL)

    def ping(self) -> bytes:
        self._expect(Role.NODE, State.IDLE)
        return frame(Kind.PING)

    def pong(self) -> bytes:
        self._expect(Role.GATEWAY, State.IDLE)
        return frame(Kind.PONG)

    def open(self) -> bytes:
        self._expect(Role.GATEWAY, State.IDLE)
        self.state = State.OPENING
        return frame(Kind.OPEN)

    def opened(self) -> bytes:
        self._expect(Role.NODE, State.OPENING)
        self.state = State.RAW
        return frame(Kind.OPENED)

    def refuse(self, reason: str) -> bytes:
        """REFUSE with a reason, if the protocol still has frames; b"" once raw."""
        if self.state is State.RAW:
            return b""
        self.state = State.CLOSED
        self._buf.clear()
        return frame(Kind.REFUSE, reason.encode("utf-8")[:MAX_REASON])
