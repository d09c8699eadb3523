"""A TCP connect by name or address, as a socket for the node's own epoll.

The node reads and writes its sockets itself (``proxy.sockettransport``, TLS with
``proxy.tlssocket``) over its ``Readiness``, not through uvloop's transports, so a
connect gives it the bare socket. ``--gateway`` and ``--to`` may be names: each address is
tried in turn, as ``loop.create_connection`` does (``localhost`` may put ``::1`` first
while the backend listens on 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any


async def connect_tcp(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to ``host`` (a name: each of its addresses in
    turn, as ``create_connection`` does); raises the last address's error."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addrs: list[tuple[int, tuple[Any, ...]]] = [(i[0], i[4]) for i in infos]
    else:  # an address: no lookup (uvloop's getaddrinfo is a trip through its thread pool)
        addrs = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
    error: OSError = OSError(f"{host} has no address")
    for family, addr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            error = e
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error
