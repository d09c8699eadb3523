"""How the proxy reaches a backend: one small interface, so reverse tunnels can plug in.

A connector turns a backend address into a connected asyncio transport driving the
given protocol. ``TcpConnector`` dials directly (the overlay network routes it); a
reverse-tunnel connector would instead open a stream on a node's dialled-in session.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from webgateway.addresses import HostPort

P = TypeVar("P", bound=asyncio.Protocol)


class Connector(Protocol):
    async def connect(
        self, backend: HostPort, protocol_factory: Callable[[], P], timeout: float  # noqa: ASYNC109
    ) -> tuple[asyncio.Transport, P]:
        """Connect or raise ``OSError`` (refused, unreachable) / ``TimeoutError``."""
        ...


class TcpConnector:
    """Plain TCP to the backend's address, Nagle off (we forward whole records)."""

    async def connect(
        self, backend: HostPort, protocol_factory: Callable[[], P], timeout: float  # noqa: ASYNC109
    ) -> tuple[asyncio.Transport, P]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if backend.host.version == 6 else socket.AF_INET
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                protocol_factory, str(backend.host), backend.port, family=family
            )
        return transport, protocol
