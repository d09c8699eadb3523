"""How the proxy reaches a backend: one small interface, so reverse tunnels can plug in.

A connector starts connecting a backend address and reports the connected transport,
already driving the given protocol, to a callback: no task or future per connect.
``TcpConnector`` dials directly (the overlay network routes it) on a non-blocking socket
(``proxy.sockettransport.Connect``); a tunnel name's streams come from ``tunnel.gateway``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from proxy.readiness import Readiness
from proxy.sockettransport import Connect, SocketTransport
from webgateway.addresses import HostPort

#: What a connect ends with: the transport, or None and why not.
Done = Callable[[SocketTransport | None, BaseException | None], None]


class Connector(Protocol):
    def connect(self, readiness: Readiness, backend: HostPort, protocol: asyncio.Protocol,
                timeout: float, done: Done) -> Callable[[], None]:
        """Start connecting; ``done`` gets the transport, or None and ``OSError`` (refused,
        unreachable) / ``TimeoutError``. Returns what cancels it (``done`` not called)."""
        ...


class TcpConnector:
    """Plain TCP to the backend's address, Nagle off (we forward whole records)."""

    def connect(self, readiness: Readiness, backend: HostPort, protocol: asyncio.Protocol,
                timeout: float, done: Done) -> Callable[[], None]:
        return Connect(readiness, backend, protocol, timeout, done).cancel
