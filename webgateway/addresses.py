"""Host:port parsing shared by listen addresses and backends.

IPv6 literals must be bracketed (``[fd00::5]:8080``) so the port is never ambiguous;
host names are refused because a gateway must not depend on a resolver to reach an
overlay backend or to bind a socket.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class HostPort:
    host: IPAddress
    port: int
    #: ``ipaddress`` hashes through ``hex()`` (about 1.5 µs); the proxy looks a backend up
    #: in the policy's and the balancer's tables for every connection. Made of integers
    #: only, so a pickled copy in a worker process keeps a valid hash.
    _hash: int = field(init=False, repr=False, compare=False)
    #: What ``connect`` takes, made once: ``str`` of an ``ipaddress`` is ~2 µs per connect.
    sockaddr: tuple[str, int] = field(init=False, repr=False, compare=False)
    #: The socket family to connect with (``host.version`` is a Python property call).
    family: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((int(self.host), self.host.version, self.port)))
        object.__setattr__(self, "sockaddr", (str(self.host), self.port))
        object.__setattr__(self, "family",
                           socket.AF_INET6 if self.host.version == 6 else socket.AF_INET)

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_ip(text: str) -> IPAddress:
    """Parse a bare IPv4/IPv6 address; raise ValueError with a message for people."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def parse_hostport(text: str, *, allow_port_zero: bool = False) -> HostPort:
    """Parse ``1.2.3.4:80`` or ``[::1]:80``."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string like '127.0.0.1:53' or '[::1]:53', got {text!r}")
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1 :].startswith(":"):
            raise ValueError(f"{text!r}: write IPv6 as '[addr]:port'")
        host_s, port_s = s[1:end], s[end + 2 :]
    else:
        host_s, sep, port_s = s.rpartition(":")
        if not sep or not host_s:
            raise ValueError(f"{text!r}: expected 'address:port'")
        if ":" in host_s:
            raise ValueError(f"{text!r}: write IPv6 as '[addr]:port'")
    host = parse_ip(host_s)
    if host_s.strip() != host_s or "%" in host_s:
        raise ValueError(f"{text!r}: address must not carry spaces or a zone index")
    if not port_s.isdigit():
        raise ValueError(f"{text!r}: port must be a number")
    port = int(port_s)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{text!r}: port must be between {low} and 65535")
    return HostPort(host, port)
