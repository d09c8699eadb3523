"""Sans-IO reading of a TLS ClientHello: SNI and ALPN from the first bytes of a connection.

The proxy must choose a route (and a certificate, or passthrough) before any TLS
library sees the connection, so it reads the ClientHello itself. Everything here is
bounded: record and handshake lengths are capped, loops walk length-prefixed lists
that shrink on each step, and any inconsistency is a ``ClientHelloError`` -- never an
IndexError or an unbounded wait. No sockets: the caller feeds bytes and gets back
either a result, ``NEED_MORE``, or an error.
"""

from __future__ import annotations

import re
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


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")


def is_host_name(name: str) -> bool:
    """Lower-case LDH host name (underscores allowed), 1-253 chars, labels of 1-63."""
    return len(name) <= 253 and _HOST.fullmatch(name) is not None


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
    sni, alpn = _hello(bytes(body[4:need]))
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


def _hello(m: bytes) -> tuple[str | None, tuple[str, ...]]:
    """Walk the ClientHello body. Every length is checked against ``end`` before use."""
    end = len(m)
    if end < 38 or m[0] != 3:
        raise ClientHelloError("unsupported legacy_version")
    i = 34  # version + random
    n = m[i]
    if n > 32:
        raise ClientHelloError("session id longer than 32 bytes")
    i += 1 + n
    if i + 2 > end:
        raise ClientHelloError("truncated ClientHello")
    n = (m[i] << 8) | m[i + 1]
    if n == 0 or n % 2:
        raise ClientHelloError("bad cipher suite list")
    i += 2 + n
    if i + 1 > end:
        raise ClientHelloError("truncated ClientHello")
    n = m[i]
    if n == 0:
        raise ClientHelloError("empty compression method list")
    i += 1 + n
    if i > end:
        raise ClientHelloError("truncated ClientHello")
    if i == end:
        return None, ()
    if i + 2 > end:
        raise ClientHelloError("truncated ClientHello")
    n = (m[i] << 8) | m[i + 1]
    i += 2
    if i + n != end:
        raise ClientHelloError("extensions do not fill the ClientHello")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    while i < end:
        if i + 4 > end:
            raise ClientHelloError("truncated extension")
        etype = (m[i] << 8) | m[i + 1]
        elen = (m[i + 2] << 8) | m[i + 3]
        i += 4
        if i + elen > end:
            raise ClientHelloError("truncated extension")
        if etype in seen:
            raise ClientHelloError(f"duplicate extension {etype}")
        seen.add(etype)
        if etype == _EXT_SNI:
            sni = _server_name(m[i : i + elen])
        elif etype == _EXT_ALPN:
            alpn = _alpn(m[i : i + elen])
        i += elen
    return sni, alpn


def _list16(data: bytes, what: str) -> int:
    """Check a data block that is exactly one non-empty 16-bit-length list; return its end."""
    if len(data) < 2 or ((data[0] << 8) | data[1]) != len(data) - 2 or len(data) == 2:
        raise ClientHelloError(f"bad {what} extension")
    return len(data)


def _server_name(data: bytes) -> str | None:
    end = _list16(data, "server_name")
    i = 2
    name: str | None = None
    while i < end:
        if i + 3 > end:
            raise ClientHelloError("truncated server_name")
        kind = data[i]
        n = (data[i + 1] << 8) | data[i + 2]
        i += 3
        if i + n > end:
            raise ClientHelloError("truncated server_name")
        if kind == 0:
            if name is not None:
                raise ClientHelloError("two host names in server_name")
            try:
                text = data[i : i + n].decode("ascii").lower()
            except UnicodeDecodeError:
                raise ClientHelloError("server name is not ASCII") from None
            if text.endswith("."):
                text = text[:-1]
            if not is_host_name(text):
                raise ClientHelloError("server name is not a host name")
            name = text
        i += n
    return name


def _alpn(data: bytes) -> tuple[str, ...]:
    end = _list16(data, "ALPN")
    i = 2
    out: list[str] = []
    while i < end:
        n = data[i]
        i += 1
        if n == 0 or i + n > end:
            raise ClientHelloError("bad ALPN protocol name")
        out.append(data[i : i + n].decode("latin-1"))
        i += n
    return tuple(out)


def alert(description: int) -> bytes:
    """A fatal TLS alert record, sent in clear before any handshake (RFC 8446 6)."""
    return bytes((21, 3, 3, 0, 2, 2, description & 0xFF))
