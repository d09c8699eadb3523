"""The node's pool at one gateway as counts: when to dial, how many, when to shrink (pure).

A connection is *dialling* (connecting, authenticating, or backing off after a failure:
one is on its way), *idle* (accepted, waiting for a client) or *busy* (serving a stream).
A busy connection comes back idle when its stream ends cleanly (``wire`` END both ways),
so back-to-back clients reuse the same few connections and dial nothing; a dial happens
when more clients are in flight at once than there are spare connections. Topping up on
a low-water mark dials in batches ahead of demand, so a stream rarely meets a TLS
handshake (both ends, the same cores) on its first-byte path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Pool:
    size: int  # the spare (idle or dialling) connections a refill tops up to
    low_water: int  # top up to ``size`` when the spare ones fall below this
    shrink_after: float  # seconds without a stream before a link keeps one idle (0: never)
    idle: int = 0
    dialling: int = 0
    busy: int = 0
    last_take: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.low_water <= self.size:
            raise ValueError(f"low_water must be from 1 to size ({self.size})")
        self.dialling = self.size - self.idle - self.busy  # the first fill

    @property
    def spare(self) -> int:
        """Connections a client could get now or soon."""
        return self.idle + self.dialling

    def accepted(self) -> None:
        self.dialling -= 1
        self.idle += 1

    def turned_away(self) -> None:
        """The gateway keeps no more idle connections of ours: the dial ends."""
        self.dialling -= 1

    def taken(self, now: float) -> None:
        self.idle -= 1
        self.busy += 1
        self.last_take = now

    def returned(self) -> None:
        """A stream ended cleanly: its connection is idle again."""
        self.busy -= 1
        self.idle += 1

    def lost_busy(self) -> None:
        self.busy -= 1

    def lost_idle(self, park: bool) -> bool:
        """An idle connection closed: by us or the gateway's cap (``park``), or not (then
        True: dial a replacement)."""
        self.idle -= 1
        if park:
            return False
        self.dialling += 1
        return True

    def refill(self) -> int:
        """How many to dial now (they count as dialling at once)."""
        if self.spare >= self.low_water:
            return 0
        n = self.size - self.spare
        self.dialling += n
        return n

    def surplus(self, now: float) -> int:
        """Idle connections to close now: a link quiet for ``shrink_after`` keeps one."""
        if self.shrink_after <= 0 or now - self.last_take < self.shrink_after:
            return 0
        return max(0, self.idle - 1)
