"""Response rate limiting (RRL): how many UDP answers one source network gets per second.

A flood from a few networks spends the server's time on replies nobody honest asked for
(on loopback the reply's ``sendto`` is most of a query's cost), and with spoofed sources
turns the server into an amplifier. Each source prefix (IPv4 /24, IPv6 /56, as BIND and
Knot group them) draws from a token bucket refilled at ``rate`` per second and holding at
most one second's worth. Over the limit, every ``slip``-th query still gets a truncated
reply (TC=1: a real resolver behind that network retries over TCP, which a spoofer cannot),
the others none. Queries are counted as they arrive, before any parsing, so a limited
flood costs one table lookup each. The table has a fixed number of buckets indexed by the
prefix's hash (salted per process by Python, so collisions cannot be aimed): memory is
bounded whatever the number of sources, and networks that collide are limited together,
as in Knot's RRL table. Sans-IO: source and time in, a verdict out.
"""

from __future__ import annotations

import socket

ANSWER = 0
SLIP = 1
DROP = 2


def prefix(host: str) -> str | bytes:
    """The network a source address is limited as: its /24 (IPv4, also when mapped into
    IPv6 on a dual-stack socket) or /56 (IPv6)."""
    if "." in host:
        return host[: host.rfind(".")]
    try:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0])[:7]
    except OSError:
        return host


class RateLimiter:
    """Token buckets per source prefix in a fixed table; ``check`` says what one query gets."""

    def __init__(self, rate: int, slip: int = 2, size: int = 65_536) -> None:
        if rate < 1 or slip < 0 or size < 1:
            raise ValueError("rate and size must be positive, slip not negative")
        self.rate = float(rate)
        self.slip = slip
        self.size = size
        self._tokens = [float(rate)] * size
        self._stamp = [float("-inf")] * size
        self.limited = 0
        self.slipped = 0

    def check(self, host: str, now: float) -> int:
        """ANSWER, SLIP or DROP for one query from ``host`` at monotonic time ``now``."""
        i = hash(prefix(host)) % self.size
        tokens = self._tokens[i] + (now - self._stamp[i]) * self.rate
        self._stamp[i] = now
        if tokens > self.rate:
            tokens = self.rate
        if tokens >= 1.0:
            self._tokens[i] = tokens - 1.0
            return ANSWER
        self._tokens[i] = tokens
        self.limited += 1
        if self.slip and self.limited % self.slip == 0:
            self.slipped += 1
            return SLIP
        return DROP
