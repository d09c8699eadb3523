"""Sans-IO reading of a TLS ClientHello: SNI and ALPN from the first bytes of a connection.

The proxy must choose a route (and a certificate, or passthrough) before any TLS
library sees the connection, so it reads the ClientHello itself. Everything here is
bounded: record and handshake lengths are capped, loops walk length-prefixed lists
that shrink on each step, and any inconsistency is a ``ClientHelloError`` -- never an
IndexError or an unbounded wait. No sockets: the caller feeds bytes and gets back
either a result, ``NEED_MORE``, or an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: A TLS record carries at most 2^14 bytes of plaintext (RFC 8446 5.1).
MAX_RECORD: Final = 1 << 14
#: A ClientHello bigger than this is refused; real ones are well under 4 KiB (PQ key
#: shares included), so 16 KiB leaves room without letting a peer hold much memory.
MAX_HELLO: Final = 1 << 14
#: The most bytes a caller ever needs to buffer to decide: records of MAX_HELLO + headers.
MAX_PEEK: Final = MAX_HELLO + 5 * 4

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_EXT_SNI: Final = 0
_EXT_ALPN: Final = 16

# Alert descriptions (RFC 8446 6.2) the proxy sends itself.
ALERT_HANDSHAKE_FAILURE: Final = 40
ALERT_DECODE_ERROR: Final = 50
ALERT_INTERNAL_ERROR: Final = 80
ALERT_UNRECOGNIZED_NAME: Final = 112


class ClientHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello."""


class _NeedMore:
    """Sentinel: the ClientHello is not complete yet; feed more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None  # lower-case, no trailing dot; None when absent
    alpn: tuple[str, ...]  # in the client's order
    length: int  # bytes of records the hello occupied (what a peek must cover)


def is_host_name(name: str) -> bool:
    if not 1 <= len(name) <= 253:
        return False
    for label in name.split("."):
        if not 1 <= len(label) <= 63:
            return False
        if label[0] == "-" or label[-1] == "-":
            return False
        for ch in label:
            if not (ch.isascii() and (ch.isalnum() or ch in "-_")):
                return False
    return True


def parse(data: bytes | bytearray | memoryview) -> ClientHello | _NeedMore:
    """Parse the start of a TLS connection.

    Returns ``NEED_MORE`` while the hello is incomplete; raises ``ClientHelloError`` as
    soon as the bytes cannot be a ClientHello (so a caller never waits on garbage).
    """
    buf = bytes(data[:MAX_PEEK])
    body = bytearray()
    pos = 0
    need: int | None = None  # handshake message length (with its 4-byte header)
    while need is None or len(body) < need:
        if len(buf) - pos < 5:
            return NEED_MORE if _prefix_ok(buf, pos) else _fail("not a TLS handshake record")
        ctype, major, _minor, rlen = buf[pos], buf[pos + 1], buf[pos + 2], _u16(buf, pos + 3)
        if ctype != _HANDSHAKE or major != 3:
            raise ClientHelloError("not a TLS handshake record")
        if rlen == 0 or rlen > MAX_RECORD:
            raise ClientHelloError(f"bad record length {rlen}")
        if len(buf) - pos - 5 < rlen:
            # Validate what we already have so garbage fails fast.
            body.extend(buf[pos + 5 :])
            _check_head(body)
            if pos + 5 + rlen > MAX_PEEK:
                raise ClientHelloError("ClientHello too large")
            return NEED_MORE
        body.extend(buf[pos + 5 : pos + 5 + rlen])
        pos += 5 + rlen
        need = _check_head(body)
    assert need is not None
    sni, alpn = _hello(memoryview(bytes(body[4:need])))
    if len(body) != need:
        # Anything after the hello inside its records would be a second handshake
        # message; a ClientHello must be alone until the server answers.
        raise ClientHelloError("unexpected data after the ClientHello")
    return ClientHello(sni, alpn, pos)


def _prefix_ok(buf: bytes, pos: int) -> bool:
    rest = buf[pos:]
    if len(rest) >= 1 and rest[0] != _HANDSHAKE:
        return False
    return not (len(rest) >= 2 and rest[1] != 3)


def _check_head(body: bytearray) -> int | None:
    if len(body) >= 1 and body[0] != _CLIENT_HELLO:
        raise ClientHelloError("first handshake message is not a ClientHello")
    if len(body) < 4:
        return None
    mlen = (body[1] << 16) | (body[2] << 8) | body[3]
    if mlen < 38 or mlen > MAX_HELLO:
        raise ClientHelloError(f"bad ClientHello length {mlen}")
    return mlen + 4


def _u16(b: bytes | memoryview, i: int) -> int:
    return (b[i] << 8) | b[i + 1]


def _fail(why: str) -> _NeedMore:
    raise ClientHelloError(why)


class _Reader:
    """A cursor over a bounded slice; every read checks the bounds."""

    __slots__ = ("b", "end", "i")

    def __init__(self, b: memoryview, start: int = 0, end: int | None = None) -> None:
        self.b = b
        self.i = start
        self.end = len(b) if end is None else end

    def take(self, n: int) -> memoryview:
        if n < 0 or self.i + n > self.end:
            raise ClientHelloError("truncated ClientHello")
        v = self.b[self.i : self.i + n]
        self.i += n
        return v

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        v = self.take(2)
        return (v[0] << 8) | v[1]

    def vec8(self) -> memoryview:
        return self.take(self.u8())

    def vec16(self) -> memoryview:
        return self.take(self.u16())

    @property
    def left(self) -> int:
        return self.end - self.i


def _hello(msg: memoryview) -> tuple[str | None, tuple[str, ...]]:
    r = _Reader(msg)
    if r.u8() != 3:
        raise ClientHelloError("unsupported legacy_version")
    r.u8()
    r.take(32)  # random
    if len(r.vec8()) > 32:
        raise ClientHelloError("session id longer than 32 bytes")
    suites = r.vec16()
    if not suites or len(suites) % 2:
        raise ClientHelloError("bad cipher suite list")
    if not r.vec8():
        raise ClientHelloError("empty compression method list")
    if r.left == 0:
        return None, ()
    exts = _Reader(r.vec16())
    if r.left:
        raise ClientHelloError("trailing bytes after extensions")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    while exts.left:
        etype = exts.u16()
        edata = exts.vec16()
        if etype in seen:
            raise ClientHelloError(f"duplicate extension {etype}")
        seen.add(etype)
        if etype == _EXT_SNI:
            sni = _server_name(edata)
        elif etype == _EXT_ALPN:
            alpn = _alpn(edata)
    return sni, alpn


def _server_name(data: memoryview) -> str | None:
    outer = _Reader(data)
    lst = _Reader(outer.vec16())
    if outer.left or not lst.left:
        raise ClientHelloError("bad server_name extension")
    name: str | None = None
    while lst.left:
        kind = lst.u8()
        value = lst.vec16()
        if kind == 0:
            if name is not None:
                raise ClientHelloError("two host names in server_name")
            try:
                text = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                raise ClientHelloError("server name is not ASCII") from None
            text = text.lower()
            if text.endswith("."):
                text = text[:-1]
            if not is_host_name(text):
                raise ClientHelloError("server name is not a host name")
            name = text
    return name


def _alpn(data: memoryview) -> tuple[str, ...]:
    outer = _Reader(data)
    lst = _Reader(outer.vec16())
    if outer.left or not lst.left:
        raise ClientHelloError("bad ALPN extension")
    out: list[str] = []
    while lst.left:
        proto = lst.vec8()
        if not proto:
            raise ClientHelloError("empty ALPN protocol name")
        out.append(bytes(proto).decode("latin-1"))
    return tuple(out)


def alert(description: int) -> bytes:
    """A fatal TLS alert record, sent in clear before any handshake (RFC 8446 6)."""
    return bytes((21, 3, 3, 0, 2, 2, description & 0xFF))
