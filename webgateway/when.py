"""Instants as people read them: RFC 3339 for machines, a date and days left for eyes.

The store keeps epoch seconds; every view (API JSON, CLI tables, the dashboard) turns
them into these forms here, so no listing ever shows an epoch and all agree on rounding.
"""

from __future__ import annotations

import datetime as dt
import math
import time

DAY = 86400.0


def rfc3339(ts: float) -> str | None:
    """``2026-12-01T10:00:00Z``; ``None`` for the store's "not set" (0)."""
    if not ts:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(ts: float) -> str:
    """``2026-12-01T10:00:00.123Z``: log lines, where events a millisecond apart differ."""
    ms = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


def parse_rfc3339(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def days_left(ts: float, now: float) -> int | None:
    """Whole days until ``ts`` (rounded down; negative once past); ``None`` when not set."""
    if not ts:
        return None
    return math.floor((ts - now) / DAY)


def date_of(text: str | None) -> str:
    """The date part of an RFC 3339 instant, ``-`` when there is none."""
    return text[:10] if text else "-"


def minute_of(text: str | None) -> str:
    """``2026-12-01 10:00 UTC`` from an RFC 3339 instant, ``-`` when there is none."""
    return f"{text[:10]} {text[11:16]} UTC" if text else "-"
