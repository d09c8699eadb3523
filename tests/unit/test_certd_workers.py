"""The ACME pool runs the oldest order's requests first."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from certd.workers import PriorityPool


def test_lower_priority_first_then_submission_order() -> None:
    pool = PriorityPool(1, "t")
    gate = threading.Event()
    ran: list[str] = []
    try:
        first = pool.submit(0, lambda: gate.wait(5))
        futs = [pool.submit(p, lambda n=n: ran.append(n))
                for p, n in ((3.0, "c"), (1.0, "a"), (2.0, "b1"), (2.0, "b2"))]
        gate.set()
        first.result(5)
        for f in futs:
            f.result(5)
        assert ran == ["a", "b1", "b2", "c"]
    finally:
        pool.shutdown()


def test_exceptions_reach_the_caller_and_shutdown_cancels_queued() -> None:
    pool = PriorityPool(1, "t")
    gate = threading.Event()

    def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        pool.submit(0, boom).result(5)
    started = threading.Event()

    def block() -> bool:
        started.set()
        return gate.wait(5)

    blocker = pool.submit(0, block)
    assert started.wait(5)
    queued = pool.submit(1, lambda: None)
    pool.shutdown()
    gate.set()
    blocker.result(5)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(0, lambda: None)
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(0)
