"""Jittered exponential back-off for the node's reconnects (pure: the caller sleeps).

Jitter matters more than the curve: after a gateway restart every node in the fleet
lost its connections at the same instant, and without it they would all come back in
the same instant, every time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

BASE: Final = 0.25
CAP: Final = 30.0


class Backoff:
    """Delays base * 2^n, each drawn from the upper half (at least half the nominal delay,
    so a flapping gateway is not hammered), capped at ``cap`` seconds."""

    def __init__(self, base: float = BASE, cap: float = CAP,
                 rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next(self) -> float:
        nominal = min(self.cap, self.base * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return nominal / 2 + self.rng() * nominal / 2

    def reset(self) -> None:
        self.failures = 0
