"""The node's pool at one gateway as counts: when to dial, how many, when to shrink (pure).

The node has ``size`` slots per gateway; each holds at most one connection at a time and
is in one of three states: *dialling* (connecting, authenticating, or backing off after
a failure: a connection is on its way), *idle* (accepted, waiting for a client) or
*parked* (its connection was taken by a stream, closed because the link was quiet, or
turned away because the gateway's pool for the name is full; it waits until a refill
sends it dialling again). Dialling per stream put a replacement's
TLS handshake (both ends, the same cores) on almost every stream's first-byte path;
topping up on a low-water mark dials in batches, and most streams see none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Pool:
    size: int  # slots: the most idle connections kept
    low_water: int  # top up to ``size`` when the spare ones fall below this
    shrink_after: float  # seconds without a stream before a link keeps one idle (0: never)
    idle: int = 0
    dialling: int = 0
    parked: int = 0
    last_take: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.low_water <= self.size:
            raise ValueError(f"low_water must be from 1 to size ({self.size})")
        self.dialling = self.size - self.idle - self.parked  # every slot starts dialling

    @property
    def spare(self) -> int:
        """Connections a client could get now or soon."""
        return self.idle + self.dialling

    def accepted(self) -> None:
        self.dialling -= 1
        self.idle += 1

    def taken(self, now: float) -> None:
        self.idle -= 1
        self.parked += 1
        self.last_take = now

    def lost(self, park: bool) -> None:
        """An idle connection closed: by us (the slot parks) or not (it dials again)."""
        self.idle -= 1
        if park:
            self.parked += 1
        else:
            self.dialling += 1

    def turned_away(self) -> None:
        """The gateway keeps no more idle connections of ours: the slot parks."""
        self.dialling -= 1
        self.parked += 1

    def refill(self) -> int:
        """How many parked slots to send dialling now (they count as dialling at once)."""
        if self.spare >= self.low_water:
            return 0
        n = min(self.size - self.spare, self.parked)
        self.parked -= n
        self.dialling += n
        return n

    def surplus(self, now: float) -> int:
        """Idle connections to close now: a link quiet for ``shrink_after`` keeps one."""
        if self.shrink_after <= 0 or now - self.last_take < self.shrink_after:
            return 0
        return max(0, self.idle - 1)
