"""Least connections with passive health."""

from __future__ import annotations

from proxy.balancer import Balancer
from webgateway.addresses import parse_hostport

A, B, C = (parse_hostport(x) for x in ("10.0.0.1:80", "[fd00::2]:80", "10.0.0.3:80"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_connections() -> None:
    b = Balancer(Clock())
    picks = []
    for _ in range(6):
        first = b.order((A, B, C))[0]
        b.acquire(first)
        picks.append(first)
    assert sorted(map(str, picks)) == sorted(map(str, [A, A, B, B, C, C]))
    b.release(A)
    b.release(A)
    assert b.order((A, B, C))[0] == A
    assert b.active(A) == 0


def test_failed_backend_goes_last_until_its_backoff_ends() -> None:
    clock = Clock()
    b = Balancer(clock)
    b.failed(A)
    assert b.order((A, B))[-1] == A
    b.failed(A)  # second failure: longer back-off
    clock.now += 1.5
    assert b.order((A, B))[-1] == A
    clock.now += 1.0
    assert b.order((A, B))[0] == A
    # the only backend is still tried even while marked down
    b.failed(C)
    assert b.order((C,)) == [C]
    b.acquire(C)  # a success clears the failure state
    assert b.order((C, A))[-1] == C  # C has a connection now, A none


def test_backoff_is_capped_even_after_many_failures() -> None:
    clock = Clock()
    b = Balancer(clock)
    for i in range(2000):
        assert b.failed(A) == i + 1
    clock.now += 31
    assert b.order((A, B))[0] == A
