"""Binding a listening socket the one way every service of the gateway does it.

dnsd and the proxy bind their own sockets (rather than letting the event loop do it)
so they can set ``SO_REUSEPORT`` for worker processes, ``IPV6_V6ONLY`` so ``[::]`` and
``0.0.0.0`` are separate listeners, and per-kind options; a failure is a ``ConfigError``
naming the config key, because it is always the operator's address or port.
"""

from __future__ import annotations

import errno
import socket

from webgateway.addresses import HostPort
from webgateway.config import ConfigError


def bind(
    key: str,
    addr: HostPort,
    kind: int = socket.SOCK_STREAM,
    *,
    reuse_port: bool = False,
    backlog: int | None = None,
    defer_accept: int = 0,
    rcvbuf: int = 0,
) -> socket.socket:
    """A bound, non-blocking socket (listening when ``backlog`` is given)."""
    family = addr.family
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(addr.sockaddr)
        if defer_accept:
            # Wake us only once the client has sent something (its ClientHello), which
            # saves a readiness round per connection and keeps silent sockets in the kernel.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        kind_s = "udp" if kind == socket.SOCK_DGRAM else "tcp"
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise ConfigError(key, f"cannot bind {kind_s} {addr}: {reason}") from None
    return sock
