"""When to act on a certificate: pure functions of (state, clock, random source).

Kept free of I/O so every timing rule -- renewal at a fraction of the lifetime with
jitter, ARI windows, exponential backoff, Retry-After, order polling -- is unit-tested
without a CA, and the service only asks "what now, and when next?".
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import random
from dataclasses import dataclass

from webgateway.model import Certificate, CertState

#: First retry after a transient failure (CA unreachable, timeout): short, so a CA that
#: comes back is used quickly. Failures the CA reports about the order itself (invalid
#: authorization) start higher: Let's Encrypt counts failed validations per hour.
TRANSIENT_BASE = 5.0
ORDER_BASE = 60.0
BACKOFF_CAP = 6 * 3600.0
#: Jitter on renewal: +-2.5 % of the lifetime, so a fleet of certificates issued together
#: does not renew in one burst.
RENEW_JITTER = 0.025


class FailureKind(enum.Enum):
    TRANSIENT = "transient"  # network, 5xx, timeouts: retry soon
    ORDER = "order"  # the CA refused the order or a validation failed


def renew_at(
    not_before: float, not_after: float, fraction: float, rng: random.Random | None = None
) -> float:
    """Renewal time at ``fraction`` of the lifetime, jittered, kept inside the lifetime."""
    life = max(not_after - not_before, 0.0)
    base = not_before + life * fraction
    jitter = (rng or random.Random()).uniform(-RENEW_JITTER, RENEW_JITTER) * life
    return min(max(base + jitter, not_before), not_after)


def ari_renew_at(
    window_start: float, window_end: float, now: float, rng: random.Random | None = None
) -> float:
    """A uniformly random instant in the CA's suggested window (ARI); now if it is past."""
    if window_end <= window_start:
        return max(window_start, now)
    if window_end <= now:
        return now
    pick = (rng or random.Random()).uniform(window_start, window_end)
    return max(pick, now)


def backoff(
    failures: int, now: float, kind: FailureKind, rng: random.Random | None = None
) -> float:
    """The next attempt after the ``failures``-th failure in a row (failures >= 1)."""
    base = TRANSIENT_BASE if kind is FailureKind.TRANSIENT else ORDER_BASE
    delay: float = min(base * 2.0 ** max(failures - 1, 0), BACKOFF_CAP)
    delay *= (rng or random.Random()).uniform(0.9, 1.1)
    return now + delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a Retry-After header (delta-seconds or HTTP date); None if absent."""
    if value is None:
        return None
    v = value.strip()
    if v.isdigit():
        return float(int(v))
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(float(when.timestamp()) - now, 0.0)


class NetAction(enum.Enum):
    RETRY_NOW = "retry-now"  # badNonce: a fresh nonce is all it takes
    RETRY_AFTER = "retry-after"  # 429/503 with a short Retry-After: wait, then retry
    GIVE_UP_UNTIL = "give-up-until"  # long Retry-After: fail the attempt, next_attempt set
    RAISE = "raise"


@dataclass(frozen=True)
class NetDecision:
    action: NetAction
    delay: float = 0.0


#: A Retry-After longer than this is not slept inside a worker thread: the attempt fails
#: and the scheduler retries at the time the CA asked for.
MAX_INLINE_WAIT = 10.0
MAX_NET_ATTEMPTS = 12
DEFAULT_RETRY_AFTER = 2.0


def on_error(
    status: int, problem: str, retry_after: float | None, attempt: int
) -> NetDecision:
    """What to do after a failed ACME request (``attempt`` counts from 1)."""
    last = attempt >= MAX_NET_ATTEMPTS
    if problem.endswith(":badNonce") or problem == "badNonce":
        return NetDecision(NetAction.RAISE if last else NetAction.RETRY_NOW)
    if status in (429, 503) or problem.endswith(":rateLimited"):
        wait = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
        if wait <= MAX_INLINE_WAIT and not last:
            return NetDecision(NetAction.RETRY_AFTER, wait)
        return NetDecision(NetAction.GIVE_UP_UNTIL, wait)
    return NetDecision(NetAction.RAISE)


def poll_delay(round_: int) -> float:
    """Wait before the ``round_``-th status poll: 20 ms growing to 1 s (not a flat 1 s)."""
    return float(min(0.02 * 1.5**round_, 1.0))


def due_at(cert: Certificate | None, wanted: tuple[str, ...], files_ok: bool) -> float:
    """When this certificate next needs an order (0.0: now)."""
    if cert is None or tuple(cert.domains) != wanted:
        return 0.0
    if cert.state == CertState.VALID:
        return cert.renew_at if files_ok else 0.0
    if cert.state == CertState.FAILED and cert.failures == 0:
        return 0.0
    return cert.next_attempt


def apply_ari(
    current: float, window: tuple[float, float], now: float, rng: random.Random | None = None
) -> float:
    """Keep our renewal time if it is inside the CA's window (ARI), else pick one in it."""
    start, end = window
    if start <= current <= end and current >= now:
        return current
    return ari_renew_at(start, end, now, rng)


#: Ask for renewalInfo again after this long when the CA sends no Retry-After.
ARI_DEFAULT_RECHECK = 6 * 3600.0


def parse_renewal_info(
    doc: object, retry_after: str | None, now: float
) -> tuple[tuple[float, float], float] | None:
    """(window, next check time) from a renewalInfo reply; None if it is malformed."""
    if not isinstance(doc, dict):
        return None
    win = doc.get("suggestedWindow")
    if not isinstance(win, dict):
        return None
    try:
        start, end = (
            datetime.datetime.fromisoformat(str(win[k]).replace("Z", "+00:00")).timestamp()
            for k in ("start", "end")
        )
    except (KeyError, ValueError):
        return None
    if end < start:
        return None
    wait = parse_retry_after(retry_after, now)
    recheck = now + (ARI_DEFAULT_RECHECK if wait is None else min(max(wait, 60.0), 86400.0))
    return (start, end), recheck
