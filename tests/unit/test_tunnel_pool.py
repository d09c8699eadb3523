"""The node's pool arithmetic: a stream's connection comes back, batches on a low-water
mark when clients overlap, and a quiet link shrinks to one idle connection."""

from __future__ import annotations

import pytest

from tunnel.pool import Pool


def filled(size: int = 4, low_water: int = 2, shrink_after: float = 60.0) -> Pool:
    p = Pool(size, low_water, shrink_after, last_take=0.0)
    assert (p.dialling, p.idle, p.busy) == (size, 0, 0)  # the first fill dials them all
    for _ in range(size):
        p.accepted()
    return p


def test_back_to_back_streams_reuse_connections_and_dial_nothing() -> None:
    p = filled()
    for t in range(20):
        p.taken(float(t))
        assert p.refill() == 0
        p.returned()
    assert (p.idle, p.dialling, p.busy) == (4, 0, 0)


def test_overlapping_streams_dial_in_batches_below_the_low_water_mark() -> None:
    p = filled()
    dials = []
    for t in range(9):  # nine clients at once, none done yet
        p.taken(float(t))
        n = p.refill()
        dials.append(n)
        for _ in range(n):
            p.accepted()
        assert p.idle >= 1  # a stream never found the pool empty
    assert dials == [0, 0, 3, 0, 0, 3, 0, 0, 3]  # one batch per 3 streams, not one per stream
    for _ in range(9):
        p.returned()
    assert (p.idle, p.busy) == (13, 0)  # kept until the link is quiet (or the gateway's cap)


def test_refill_counts_connections_on_their_way() -> None:
    p = filled()
    p.taken(1.0)
    p.taken(1.0)
    p.taken(1.0)
    assert p.refill() == 3 and p.dialling == 3
    p.taken(1.0)  # the last idle one goes before any dial finished
    assert p.spare == 3 and p.refill() == 0  # no second batch while the first is dialling


def test_a_lost_connection_dials_again_a_shrunk_one_does_not() -> None:
    p = filled()
    assert p.lost_idle(park=False)
    assert (p.idle, p.dialling) == (3, 1)
    p.accepted()
    assert not p.lost_idle(park=True)
    assert (p.idle, p.dialling) == (3, 0)
    p.taken(1.0)
    p.lost_busy()  # a stream that ended uncleanly takes its connection with it
    assert (p.idle, p.busy) == (2, 0)
    assert p.refill() == 0  # at the low-water mark: enough
    p.taken(1.0)
    assert p.refill() == 3
    p.accepted()
    p.accepted()
    p.turned_away()  # the gateway's pool for the name is full
    assert (p.idle, p.dialling, p.busy) == (3, 0, 1)


def test_a_quiet_link_keeps_one_idle_connection() -> None:
    p = filled(shrink_after=60.0)
    p.taken(100.0)
    p.returned()
    assert p.surplus(159.0) == 0
    assert p.surplus(160.0) == 3  # 4 idle, keep one
    for _ in range(3):
        p.lost_idle(park=True)
    assert p.surplus(500.0) == 0
    p.taken(500.0)  # the next stream takes the last one: a full batch at once
    assert p.spare == 0 and p.refill() == 4
    assert filled(shrink_after=0).surplus(1e9) == 0  # 0: never shrink


@pytest.mark.parametrize(("size", "low"), [(4, 0), (4, 5)])
def test_low_water_is_within_the_pool(size: int, low: int) -> None:
    with pytest.raises(ValueError, match="low_water"):
        Pool(size, low, 60.0)
