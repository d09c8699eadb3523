"""Every way an order attempt can end, and what certd makes of it."""

from __future__ import annotations

import pytest
import requests
from acme import errors as acme_errors
from acme import messages

from certd.acmenet import RetryLater, ca_asks
from certd.dnscheck import PropagationTimeout
from certd.failure import MAX_MESSAGE, Failure, classify
from certd.issuer import AccountGone, OrderDead
from certd.schedule import FailureKind

CA = "https://ca.test/dir"
T, ORDER = FailureKind.TRANSIENT, FailureKind.ORDER


@pytest.mark.parametrize(("error", "want"), [
    (OrderDead("authorization for a.test is invalid: no TXT"),
     Failure(ORDER, "authorization for a.test is invalid: no TXT", "order_invalid",
             keep_order=False)),
    (messages.Error(typ="urn:ietf:params:acme:error:rejectedIdentifier", detail="no way"),
     Failure(ORDER, "the CA refused: no way", "ca_refused", keep_order=False)),
    (messages.Error(typ="urn:ietf:params:acme:error:malformed"),
     Failure(ORDER, "the CA refused: malformed", "ca_refused", keep_order=False)),
    (AccountGone("gone"),
     Failure(T, "the CA no longer knows our account (gone); registering again", "account_gone",
             keep_order=False, forget_account=True)),
    (PropagationTimeout("ns1 serves 0 of 2"),
     Failure(T, "our DNS servers did not serve the TXT: ns1 serves 0 of 2", "dns_propagation")),
    (ca_asks(3600.0, "HTTP 429 rateLimited"),
     Failure(T, "HTTP 429 rateLimited (the CA asks to retry in 3600 s)", "retry_later",
             not_before=3600.0)),
    (RetryLater(120.0, "the fleet created 300 new orders"),  # our own budget, spent
     Failure(T, "the fleet created 300 new orders", "retry_later", not_before=120.0)),
    (TimeoutError(), Failure(T, "the CA did not answer in time", "timeout")),
    (TimeoutError("order https://ca.test/o/1 still processing after 120 s"),
     Failure(T, "order https://ca.test/o/1 still processing after 120 s", "timeout")),
    (ConnectionRefusedError(111, "Connection refused"),
     Failure(T, f"cannot reach the CA at {CA}: ConnectionRefusedError: "
                "[Errno 111] Connection refused", "ca_unreachable")),
    (requests.ConnectionError("boom"),
     Failure(T, f"cannot reach the CA at {CA}: ConnectionError: boom", "ca_unreachable")),
    (acme_errors.ClientError("bad reply"),
     Failure(T, f"cannot reach the CA at {CA}: ClientError: bad reply", "ca_unreachable")),
    (KeyError("x"), Failure(T, "KeyError: 'x'", "error", unexpected=True)),
])
def test_classify(error: Exception, want: Failure) -> None:
    assert classify(error, CA) == want


def test_a_long_message_is_cut_for_last_error() -> None:
    f = classify(OSError("x" * 2000), CA)
    assert f.message.startswith(f"cannot reach the CA at {CA}: OSError: xxx")
    assert len(f.message) == MAX_MESSAGE
