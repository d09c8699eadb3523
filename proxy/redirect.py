"""The plain-HTTP listener: 301 to https:// for names we serve, 404 for anything else.

The request head is parsed by hand (request line + Host), bounded in size and time, so
this port costs almost nothing and a slow or malformed client cannot hold it up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, cast

from proxy.clienthello import is_host_name
from proxy.engine import Engine

MAX_HEAD: Final = 8192


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    host: str | None  # lower-case, port stripped


def parse_head(buf: bytes) -> RequestHead | None:
    """The request head once complete (``None`` while incomplete); ``BadRequest`` if not HTTP."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest("request head too large")
        first = buf.split(b"\r\n", 1)[0]
        if first:
            _request_line(first, partial=b"\r\n" not in buf)
        return None
    if end > MAX_HEAD:
        raise BadRequest("request head too large")
    lines = buf[:end].split(b"\r\n")
    method, target = _request_line(lines[0], partial=False)
    host: str | None = None
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if not sep or not key or key != key.strip():
            raise BadRequest("malformed header line")
        if key.lower() == b"host":
            if host is not None:
                raise BadRequest("two Host headers")
            host = _host(value.strip())
    return RequestHead(method, target, host)


def _request_line(line: bytes, *, partial: bool) -> tuple[str, str]:
    parts = line.split(b" ")
    if partial:
        token = parts[0]
        if len(token) > 16 or not (token.isalpha() and token.isupper()):
            raise BadRequest("not an HTTP request")
        return "", ""
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest("malformed request line")
    method, target = parts[0], parts[1]
    if not method.isalpha() or not method.isupper() or not target:
        raise BadRequest("malformed request line")
    if any(c < 0x21 or c > 0x7E for c in target):
        raise BadRequest("bad characters in the request target")
    return method.decode(), target.decode("ascii")


def _host(value: bytes) -> str:
    try:
        text = value.decode("ascii").lower()
    except UnicodeDecodeError:
        raise BadRequest("Host is not ASCII") from None
    if text.startswith("["):
        raise BadRequest("IP literal Host")
    name, _, port = text.partition(":")
    if port and not port.isdigit():
        raise BadRequest("bad port in Host")
    name = name.rstrip(".")
    if not is_host_name(name):
        raise BadRequest("Host is not a host name")
    return name


def response(status: int, reason: str, location: str | None = None) -> bytes:
    body = f"{status} {reason}\n".encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    if location is not None:
        head += f"Location: {location}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body


class RedirectProtocol(asyncio.Protocol):
    """One port-80 connection: one answer, then close; its access-log line when it ends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.client: tuple[str, int] = ("", 0)
        self.started = 0.0
        self.outcome = "client_closed"  # until an answer says otherwise
        self.host: str | None = None
        self.route: str | None = None
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        self.started = asyncio.get_running_loop().time()
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = (str(peer[0]), int(peer[1]))
        if not self.engine.opened():
            self.outcome = "over_limit"
            self.transport.abort()
            return
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(
            self.engine.limits.handshake_timeout, self._timeout
        )

    def _timeout(self) -> None:
        self.timer = None
        self.outcome = "timeout"
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        try:
            head = parse_head(self.buf)
        except BadRequest:
            self._answer("bad_request", response(400, "Bad Request"))
            return
        if head is None:
            return
        self.host = head.host
        route = self.engine.table.route(head.host) if head.host else None
        if route is None or head.host is None:
            self._answer("not_found", response(404, "Not Found"))
            return
        self.route = route.name.label
        target = head.target if head.target.startswith("/") else "/"
        self._answer("redirect", response(301, "Moved Permanently",
                                          f"https://{head.host}{target}"))

    def _answer(self, outcome: str, data: bytes) -> None:
        assert self.transport is not None
        self.outcome = outcome
        self.transport.pause_reading()
        self.transport.write(data)
        self.sent = len(data)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.engine.closed()
        self.engine.http_done(self.outcome, self.client, self.started, host=self.host,
                              route=self.route, bytes_in=len(self.buf), bytes_out=self.sent)
