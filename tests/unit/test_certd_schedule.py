"""Timing rules of certd: renewal, ARI, backoff, Retry-After, polling, what is due."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from certd.schedule import (
    BACKOFF_CAP,
    MAX_INLINE_WAIT,
    MAX_NET_ATTEMPTS,
    FailureKind,
    NetAction,
    ari_renew_at,
    backoff,
    due_at,
    on_error,
    parse_retry_after,
    poll_delay,
    renew_at,
)
from webgateway.model import Certificate, CertState

DAY = 86400.0


def test_renew_at_two_thirds_with_bounded_jitter() -> None:
    nb, na = 1000.0, 1000.0 + 90 * DAY
    seen = [renew_at(nb, na, 2 / 3, random.Random(i)) for i in range(200)]
    target = nb + 60 * DAY
    assert all(abs(t - target) <= 0.025 * 90 * DAY + 1e-6 for t in seen)
    assert len(set(seen)) > 100  # really jittered
    assert min(seen) < target < max(seen)


def test_renew_at_stays_inside_lifetime() -> None:
    nb, na = 0.0, 100.0
    for i in range(100):
        assert nb <= renew_at(nb, na, 0.95, random.Random(i)) <= na
    assert renew_at(50.0, 50.0, 2 / 3) == 50.0  # degenerate lifetime


def test_ari_window_pick_and_past_window() -> None:
    picks = [ari_renew_at(100.0, 200.0, 0.0, random.Random(i)) for i in range(100)]
    assert all(100.0 <= p <= 200.0 for p in picks) and len(set(picks)) > 50
    assert ari_renew_at(100.0, 200.0, 500.0) == 500.0  # window over: renew now
    assert 150.0 <= ari_renew_at(100.0, 200.0, 150.0, random.Random(1)) <= 200.0
    assert ari_renew_at(300.0, 300.0, 0.0) == 300.0


@pytest.mark.parametrize("kind,base", [(FailureKind.TRANSIENT, 5.0), (FailureKind.ORDER, 60.0)])
def test_backoff_doubles_with_jitter_and_caps(kind: FailureKind, base: float) -> None:
    rng = random.Random(7)
    delays = [backoff(n, 1000.0, kind, rng) - 1000.0 for n in range(1, 6)]
    for n, d in enumerate(delays, start=1):
        assert base * 2 ** (n - 1) * 0.9 <= d <= base * 2 ** (n - 1) * 1.1
    assert backoff(60, 0.0, kind, rng) <= BACKOFF_CAP * 1.1


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("120", 0.0) == 120.0
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now) == pytest.approx(90.0)
    assert parse_retry_after("garbage", now) is None
    past = format_datetime(datetime(2025, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(past, now) == 0.0


def test_on_error_policy() -> None:
    bn = "urn:ietf:params:acme:error:badNonce"
    assert on_error(400, bn, None, 1).action is NetAction.RETRY_NOW
    assert on_error(400, bn, None, MAX_NET_ATTEMPTS).action is NetAction.RAISE
    d = on_error(429, "urn:ietf:params:acme:error:rateLimited", 3.0, 1)
    assert (d.action, d.delay) == (NetAction.RETRY_AFTER, 3.0)
    d = on_error(503, "", None, 1)
    assert d.action is NetAction.RETRY_AFTER and 0 < d.delay <= MAX_INLINE_WAIT
    d = on_error(429, "urn:ietf:params:acme:error:rateLimited", 3600.0, 1)
    assert (d.action, d.delay) == (NetAction.GIVE_UP_UNTIL, 3600.0)
    assert on_error(503, "", 1.0, MAX_NET_ATTEMPTS).action is NetAction.GIVE_UP_UNTIL
    assert on_error(403, "urn:ietf:params:acme:error:unauthorized", None, 1).action is (
        NetAction.RAISE)


def test_poll_delay_starts_short_and_caps_at_one_second() -> None:
    assert poll_delay(0) < 0.05
    assert all(poll_delay(i) <= poll_delay(i + 1) for i in range(30))
    assert poll_delay(100) == 1.0


def test_due_at() -> None:
    want = ("gw.test", "*.gw.test")
    assert due_at(None, want, False) == 0.0
    valid = Certificate("zone", want, CertState.VALID, "c", "k", renew_at=5000.0)
    assert due_at(valid, want, True) == 5000.0
    assert due_at(valid, want, False) == 0.0  # files gone: reissue now
    assert due_at(valid, ("gw.test",), True) == 0.0  # names changed
    failed = Certificate("zone", want, CertState.FAILED, failures=2, next_attempt=777.0)
    assert due_at(failed, want, True) == 777.0
    pending = Certificate("zone", want, CertState.PENDING, next_attempt=0.0)
    assert due_at(pending, want, False) == 0.0


def test_ari_keeps_a_time_inside_the_window_and_repicks_outside() -> None:
    from certd.schedule import apply_ari

    assert apply_ari(150.0, (100.0, 200.0), 0.0) == 150.0
    moved = apply_ari(900.0, (100.0, 200.0), 0.0, random.Random(3))
    assert 100.0 <= moved <= 200.0
    assert apply_ari(150.0, (100.0, 200.0), 170.0, random.Random(3)) >= 170.0
    assert apply_ari(150.0, (100.0, 120.0), 500.0) == 500.0  # window passed: now


def test_parse_renewal_info() -> None:
    from certd.schedule import ARI_DEFAULT_RECHECK, parse_renewal_info

    doc = {"suggestedWindow": {"start": "2026-01-02T00:00:00Z", "end": "2026-01-03T00:00:00Z"}}
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    got = parse_renewal_info(doc, None, now)
    assert got is not None
    (start, end), recheck = got
    assert end - start == DAY and start - now == DAY
    assert recheck == now + ARI_DEFAULT_RECHECK
    got = parse_renewal_info(doc, "3600", now)
    assert got is not None and got[1] == now + 3600
    assert parse_renewal_info(doc, "1", now)[1] == now + 60  # type: ignore[index]
    for bad in (None, [], {}, {"suggestedWindow": {"start": "x", "end": "y"}},
                {"suggestedWindow": {"start": "2026-01-03T00:00:00Z",
                                     "end": "2026-01-02T00:00:00Z"}}):
        assert parse_renewal_info(bad, None, now) is None
