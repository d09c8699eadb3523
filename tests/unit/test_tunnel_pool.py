"""The node's pool arithmetic: batches on a low-water mark, never per stream, and a quiet
link shrinks to one idle connection."""

from __future__ import annotations

import pytest

from tunnel.pool import Pool


def filled(size: int = 4, low_water: int = 2, shrink_after: float = 60.0) -> Pool:
    p = Pool(size, low_water, shrink_after, last_take=0.0)
    assert (p.dialling, p.idle, p.parked) == (size, 0, 0)  # every slot dials at start
    for _ in range(size):
        p.accepted()
    return p


def test_back_to_back_streams_dial_in_batches_below_the_low_water_mark() -> None:
    p = filled()
    dials = []
    for t in range(9):
        p.taken(float(t))
        n = p.refill()
        dials.append(n)
        for _ in range(n):
            p.accepted()
        assert p.idle >= 1  # a stream never found the pool empty
        assert p.idle + p.dialling + p.parked == p.size
    assert dials == [0, 0, 3, 0, 0, 3, 0, 0, 3]  # one batch per 3 streams, not one per stream


def test_refill_counts_connections_on_their_way() -> None:
    p = filled()
    p.taken(1.0)
    p.taken(1.0)
    p.taken(1.0)
    assert p.refill() == 3 and p.dialling == 3
    p.taken(1.0)  # the last idle one goes before any dial finished
    assert p.spare == 3 and p.refill() == 0  # no second batch while the first is dialling


def test_a_lost_connection_dials_again_a_shrunk_one_parks() -> None:
    p = filled()
    p.lost(park=False)
    assert (p.idle, p.dialling, p.parked) == (3, 1, 0)
    p.accepted()
    p.lost(park=True)
    assert (p.idle, p.dialling, p.parked) == (3, 0, 1)
    p.taken(1.0)
    p.taken(1.0)
    assert p.refill() == 3  # below the mark: every parked slot dials
    p.accepted()
    p.accepted()
    p.turned_away()  # the gateway's pool for the name is full: that slot parks
    assert (p.idle, p.dialling, p.parked) == (3, 0, 1)


def test_a_quiet_link_keeps_one_idle_connection() -> None:
    p = filled(shrink_after=60.0)
    p.taken(100.0)
    p.refill()
    assert p.surplus(159.0) == 0
    assert p.surplus(160.0) == 2  # 3 idle, keep one
    for _ in range(2):
        p.lost(park=True)
    assert p.surplus(500.0) == 0
    p.taken(500.0)  # the next stream takes the last one: all slots dial at once
    assert p.spare == 0 and p.refill() == 4
    assert filled(shrink_after=0).surplus(1e9) == 0  # 0: never shrink


@pytest.mark.parametrize(("size", "low"), [(4, 0), (4, 5)])
def test_low_water_is_within_the_pool(size: int, low: int) -> None:
    with pytest.raises(ValueError, match="low_water"):
        Pool(size, low, 60.0)
