"""The ACME order as a state machine: from what the CA last said, the next step.

One function decides for a fresh order and for one resumed after a restart alike, so
resuming is not a separate code path: the driver fetches the order, asks ``next_step``
and does what it says until the certificate is downloaded or the order is dead.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Step(enum.Enum):
    SOLVE = "solve"  # publish TXT for pending authorizations, wait for DNS, answer
    WAIT_AUTHZ = "wait-authz"  # challenges answered: poll the authorizations
    FINALIZE = "finalize"  # order ready: send the CSR
    WAIT_ORDER = "wait-order"  # order processing: poll it
    DOWNLOAD = "download"  # order valid: fetch the chain
    DEAD = "dead"  # order or an authorization invalid/expired: start a new one


@dataclass(frozen=True)
class AuthzView:
    identifier: str
    wildcard: bool
    status: str  # pending | valid | invalid | deactivated | expired | revoked
    challenge_status: str  # of its dns-01 challenge: pending | processing | valid | invalid
    error: str = ""


def next_step(order_status: str, authzs: Sequence[AuthzView], has_certificate_url: bool) -> Step:
    if order_status in ("invalid", "expired", "revoked", "deactivated"):
        return Step.DEAD
    if order_status == "valid":
        return Step.DOWNLOAD if has_certificate_url else Step.WAIT_ORDER
    if order_status == "processing":
        return Step.WAIT_ORDER
    if order_status == "ready":
        return Step.FINALIZE
    if any(a.status not in ("pending", "valid") for a in authzs):
        return Step.DEAD
    if any(a.status == "pending" and a.challenge_status == "pending" for a in authzs):
        return Step.SOLVE
    return Step.WAIT_AUTHZ


def dead_reason(order_status: str, authzs: Sequence[AuthzView], order_error: str) -> str:
    """A sentence for ``last_error`` saying why the order died."""
    bad = [a for a in authzs if a.status not in ("pending", "valid")]
    if bad:
        a = bad[0]
        who = ("*." if a.wildcard else "") + a.identifier
        return f"authorization for {who} is {a.status}" + (f": {a.error}" if a.error else "")
    return f"order is {order_status}" + (f": {order_error}" if order_error else "")
