"""What a failed order attempt means: one pure rule from the exception to the next move.

The scheduler needs three answers after a failure -- how fast to retry (``FailureKind``),
what to tell the owner (``last_error``), and whether the order is worth resuming -- and
they must not drift apart between the places that raise. Kept free of I/O so every
exception the attempt can end with is unit-tested without a CA.
"""

from __future__ import annotations

from dataclasses import dataclass

from acme import errors as acme_errors
from acme import messages

from certd.acmenet import RetryLater
from certd.dnscheck import PropagationTimeout
from certd.issuer import AccountGone, OrderDead
from certd.schedule import FailureKind

#: ``last_error`` is shown in the API and the CLI: one line, bounded.
MAX_MESSAGE = 500


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str  # for the log and (cut to MAX_MESSAGE) the certificate's last_error
    outcome: str  # the ``outcome`` label of webgateway_acme_orders_total: a short, fixed word
    keep_order: bool = True  # resume the same order next time (False: start a new one)
    forget_account: bool = False  # the CA no longer knows our account: register again
    unexpected: bool = False  # neither the CA nor the network: a bug, log the traceback
    not_before: float = 0.0  # seconds the CA asked us to wait (a floor on the backoff)


def classify(e: BaseException, directory: str) -> Failure:
    """The meaning of the exception an attempt ended with; ``directory`` names the CA."""
    transient = FailureKind.TRANSIENT
    if isinstance(e, OrderDead):
        return Failure(FailureKind.ORDER, str(e), "order_invalid", keep_order=False)
    if isinstance(e, messages.Error):
        return Failure(FailureKind.ORDER, f"the CA refused: {e.detail or e.code}", "ca_refused",
                       keep_order=False)
    if isinstance(e, AccountGone):
        return Failure(transient, f"the CA no longer knows our account ({e}); registering again",
                       "account_gone", keep_order=False, forget_account=True)
    if isinstance(e, PropagationTimeout):
        return Failure(transient, f"our DNS servers did not serve the TXT: {e}",
                       "dns_propagation")
    if isinstance(e, RetryLater):
        return Failure(transient, str(e), "retry_later", not_before=e.delay)
    if isinstance(e, TimeoutError):
        return Failure(transient, str(e) or "the CA did not answer in time", "timeout")
    if isinstance(e, OSError | acme_errors.Error) or type(e).__module__.startswith(
        ("requests", "urllib3")
    ):
        where = f"cannot reach the CA at {directory}: {type(e).__name__}: {e}"
        return Failure(transient, where[:MAX_MESSAGE], "ca_unreachable")
    return Failure(transient, f"{type(e).__name__}: {e}", "error", unexpected=True)
