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

from proxy import clienthello as ch
from proxy.engine import Engine
from proxy.lingering import close_gently
from proxy.pair import Pair, TunnelPair
from proxy.routes import Route
from proxy.sockettransport import SocketTransport
from proxy.splice import Splice
from proxy.tlssocket import TlsSocket, failure_reason
from tunnel import wire as tunnel_wire
from tunnel.gateway import TunnelConn

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        engine.readiness()  # its epoll made now, at start: one descriptor for good, not later

    def dispatch(self, sock: socket.socket, addr: tuple[str, int], hello: ch.ClientHello,
                 deadline: float) -> None:
        engine = self.engine
        sni = hello.server_name
        started = deadline - engine.limits.handshake_timeout
        node = tunnel_wire.ALPN in hello.alpn
        route = engine.table.route(sni) if sni else None
        if engine.hand_off is not None and (node or (route is not None and route.name.tunnel)):
            # A worker process: the main one holds the tunnels (``proxy.handoff``).
            if engine.hand_off(sock, addr, started):
                return
            if node:
                self._alert(sock, addr, started, "handoff_failed", hello,
                            desc=ch.ALERT_HANDSHAKE_FAILURE)
                return
            # a browser: served here without tunnels (its backends, else the 502 page)
        if node and engine.tunnels is not None:
            self._tunnel(sock, addr, hello, started, deadline)
            return
        if route is None:
            if engine.catch_all is not None:
                self._passthrough(sock, addr, engine.catch_all,
                                  engine.new_splice(addr, started, sni, None, "catch_all"))
                return
            log.debug("unknown server name %r from %s", sni, addr[0])
            self._alert(sock, addr, started, "unknown_sni", hello)
            return
        if route.passthrough:
            self._passthrough(sock, addr, route, engine.new_splice(
                addr, started, sni, route.name.label, "passthrough"))
            return
        ctx = engine.table.certs.context_for(route.host, route.name.http2)
        if ctx is None:
            log.debug("no certificate yet for %s", route.host)
            self._alert(sock, addr, started, "no_certificate", hello, route.name.label)
            return
        if route.name.tunnel and engine.tunnels is not None:
            TunnelPair(engine, sock, addr, route, ctx, deadline, sni)
        else:
            Pair(engine, sock, addr, route, ctx, deadline, sni)

    def _alert(self, sock: socket.socket, addr: tuple[str, int], started: float, outcome: str,
               hello: ch.ClientHello, route: str | None = None,
               desc: int = ch.ALERT_UNRECOGNIZED_NAME) -> None:
        self.engine.finish(outcome, addr, started, sni=hello.server_name, route=route)
        with contextlib.suppress(OSError):
            sock.recv(hello.length)
        close_gently(self.loop, sock, self.engine, ch.alert(desc))

    def _tunnel(self, sock: socket.socket, addr: tuple[str, int], hello: ch.ClientHello,
                started: float, deadline: float) -> None:
        """A node dialling in (ALPN ``webgateway-tunnel/1``): TLS with the zone's certificate."""
        tunnels, zone = self.engine.tunnels, self.engine.table.zone
        assert tunnels is not None
        if tunnels.throttled(addr[0]):
            self._alert(sock, addr, started, "tunnel_refused", hello,
                        desc=ch.ALERT_HANDSHAKE_FAILURE)
            return
        if hello.server_name != zone:
            tunnels.failed(addr[0], f"server name {hello.server_name!r} is not the zone {zone}")
            self._alert(sock, addr, started, "tunnel_refused", hello)
            return
        ctx = self.engine.table.certs.context_for(zone, tunnel=True)
        if ctx is None:
            log.debug("no certificate yet for %s: tunnel from %s refused", zone, addr[0])
            self._alert(sock, addr, started, "no_certificate", hello)
            return
        self._tunnel_handshake(sock, addr, ctx, started, deadline)

    def _tunnel_handshake(self, sock: socket.socket, addr: tuple[str, int],
                          ctx: ssl.SSLContext, started: float, deadline: float) -> None:
        """TLS on the proxy's own epoll (``TlsSocket``), as for a terminated browser; the
        connection then belongs to its ``TunnelConn`` (which releases the count)."""
        engine = self.engine
        assert engine.tunnels is not None
        tc = TunnelConn(engine.tunnels, addr[0], engine.closed, engine.limits.handshake_timeout)
        tls = TlsSocket(engine.readiness(), sock, ctx, bulk=True)

        def handshaken(e: BaseException | None) -> None:
            engine.loose.pop(tls, None)
            if e is not None:
                log.debug("TLS handshake with %s failed: %s", addr[0], e)
                engine.finish("handshake_failed", addr, started, sni=engine.table.zone,
                              mode="tunnel", reason=failure_reason(e))
                engine.closed()
                return
            tls.start(tc)
            engine.outcome("tunnel")

        def shutdown() -> None:
            tls.abort()
            engine.closed()

        engine.loose[tls] = shutdown
        tls.handshake(max(0.1, deadline - self.loop.time()), handshaken)

    def _passthrough(self, sock: socket.socket, addr: tuple[str, int], route: Route,
                     sp: Splice) -> None:
        engine = self.engine
        if not engine.claim(sp, route):
            sp.outcome = "over_cap"
            self._close_without_backend(sp, sock)
            return

        def shutdown() -> None:
            sock.close()
            sp.finish()

        def connected(ok: bool) -> None:
            engine.loose.pop(sp, None)
            if not ok:
                self._close_without_backend(sp, sock)
                return
            SocketTransport(engine.readiness(), sock).start(sp.client)
            sp.link()

        engine.loose[sp] = shutdown
        engine.connect_backend(route, sp, addr, sock.getsockname, connected)

    def _close_without_backend(self, sp: Splice, sock: socket.socket) -> None:
        """Passthrough: we cannot speak inside the client's TLS, so a clean close."""
        self.engine.forget(sp)
        self.engine.finish(sp.outcome, sp.client_addr, sp.started, sni=sp.sni, route=sp.route,
                           mode=sp.mode)
        close_gently(self.loop, sock, self.engine)

