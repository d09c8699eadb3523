"""PROXY protocol v2 header, so a backend behind the gateway sees the client's address.

Binary v2 (not the text v1) because it is fixed-size to parse and carries IPv6 as-is;
backends such as nginx, haproxy and Caddy accept it with one setting.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_VERSION_PROXY: Final = 0x21  # version 2, command PROXY
_VERSION_LOCAL: Final = 0x20  # version 2, command LOCAL
_TCP4: Final = 0x11
_TCP6: Final = 0x21


def header(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """The v2 header for a TCP connection from ``src`` to ``dst`` (our listener).

    Mixed or unknown families fall back to LOCAL, which tells the backend to use the
    connection's own addresses rather than trust a half-filled header.
    """
    if src is None or dst is None:
        return SIGNATURE + bytes((_VERSION_LOCAL, 0)) + b"\x00\x00"
    s = ipaddress.ip_address(src[0].split("%", 1)[0])
    d = ipaddress.ip_address(dst[0].split("%", 1)[0])
    if isinstance(s, ipaddress.IPv6Address) and s.ipv4_mapped and d.version == 4:
        s = s.ipv4_mapped
    if isinstance(d, ipaddress.IPv6Address) and d.ipv4_mapped and s.version == 4:
        d = d.ipv4_mapped
    if s.version != d.version:
        return SIGNATURE + bytes((_VERSION_LOCAL, 0)) + b"\x00\x00"
    fam = _TCP4 if s.version == 4 else _TCP6
    addrs = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    return SIGNATURE + bytes((_VERSION_PROXY, fam)) + struct.pack("!H", len(addrs)) + addrs
