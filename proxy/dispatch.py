"""What a complete ClientHello leads to: terminate, pass through, or turn the client away.

The server name picks the route. A passthrough route gets its backend connected and
the client socket handed over with the hello still unread; a terminated route gets
the TLS handshake with the certificate's context first. A name at its connection cap,
or with no backend to reach, is answered without one: an HTTP page over TLS where we
terminate, a clean close where we pass through (we cannot speak inside that TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Final

from proxy import clienthello as ch
from proxy.engine import Engine
from proxy.lingering import close_gently
from proxy.routes import Route
from proxy.splice import Splice

log = logging.getLogger(__name__)


def error_page(status: int, reason: str, text: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    body = (f"<html><body><h1>{status} {reason}</h1><p>{text}</p></body></html>\n").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


BAD_GATEWAY: Final = error_page(502, "Bad Gateway", "No backend is reachable.")
SERVICE_UNAVAILABLE: Final = error_page(
    503, "Service Unavailable", "This name has too many open connections; try again later."
)


class Dispatcher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()

    def dispatch(self, sock: socket.socket, addr: tuple[str, int], hello: ch.ClientHello,
                 deadline: float) -> None:
        engine = self.engine
        route = engine.table.route(hello.server_name) if hello.server_name else None
        if route is None:
            log.debug("unknown server name %r from %s", hello.server_name, addr[0])
            self._alert(sock, "unknown_name", hello)
            return
        if route.passthrough:
            engine.spawn(self._passthrough(sock, addr, route))
            return
        ctx = engine.table.certs.context_for(route.host, route.name.http2)
        if ctx is None:
            log.debug("no certificate yet for %s", route.host)
            self._alert(sock, "no_certificate", hello)
            return
        engine.spawn(self._terminate(sock, addr, route, ctx, deadline))

    def _alert(self, sock: socket.socket, outcome: str, hello: ch.ClientHello) -> None:
        self.engine.outcome(outcome)
        with contextlib.suppress(OSError):
            sock.recv(hello.length)
        close_gently(self.loop, sock, self.engine, ch.alert(ch.ALERT_UNRECOGNIZED_NAME))

    async def _passthrough(self, sock: socket.socket, addr: tuple[str, int], route: Route) -> None:
        engine = self.engine
        sp = engine.new_splice()
        if not engine.claim(sp, route):
            self._close_without_backend(sp, sock, "name_limit")
            return
        try:
            ok = await engine.connect_backend(route, sp, addr, sock.getsockname())
        except BaseException:
            sock.close()
            sp.finish()
            raise
        if not ok:
            self._close_without_backend(sp, sock, "no_backend")
            return
        try:
            await self.loop.connect_accepted_socket(lambda: sp.client, sock)
        except OSError:
            sock.close()
            sp.backend.close()
            sp.finish()
            return
        engine.outcome("passthrough")
        sp.link()

    def _close_without_backend(self, sp: Splice, sock: socket.socket, outcome: str) -> None:
        """Passthrough: we cannot speak inside the client's TLS, so a clean close."""
        self.engine.outcome(outcome)
        self.engine.forget(sp)
        close_gently(self.loop, sock, self.engine)

    async def _terminate(self, sock: socket.socket, addr: tuple[str, int], route: Route,
                         ctx: ssl.SSLContext, deadline: float) -> None:
        engine = self.engine
        sp = engine.new_splice()
        sp.client.half_close = False
        left = max(0.1, deadline - self.loop.time())
        try:
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: sp.client, sock, ssl=ctx, ssl_handshake_timeout=left
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.debug("TLS handshake with %s failed: %s", addr[0], e)
            engine.outcome("handshake_failed")
            sock.close()
            sp.finish()
            return
        if not engine.claim(sp, route):
            self._page_without_backend(sp, "name_limit", SERVICE_UNAVAILABLE)
            return
        try:
            local = transport.get_extra_info("sockname")
            ok = await engine.connect_backend(route, sp, addr, local)
        except BaseException:
            transport.abort()
            raise
        if not ok:
            self._page_without_backend(sp, "no_backend", BAD_GATEWAY)
            return
        engine.outcome("terminated")
        sp.link()

    def _page_without_backend(self, sp: Splice, outcome: str, page: bytes) -> None:
        """Terminated: an HTTP/1 page, then close; h2 clients just see the close."""
        self.engine.outcome(outcome)
        transport = sp.client.transport
        if transport is None or transport.is_closing():
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            transport.write(page)
        transport.close()
