"""The order state machine decides the same way for fresh and resumed orders."""

from __future__ import annotations

from certd.orderflow import AuthzView, Step, dead_reason, next_step


def az(status: str = "pending", chal: str = "pending", ident: str = "gw.test",
       wildcard: bool = False, error: str = "") -> AuthzView:
    return AuthzView(ident, wildcard, status, chal, error)


def test_fresh_order_solves() -> None:
    assert next_step("pending", [az(), az(wildcard=True)], False) is Step.SOLVE


def test_answered_order_waits_for_authz() -> None:
    assert next_step("pending", [az(chal="processing"), az(chal="processing")], False) is (
        Step.WAIT_AUTHZ)
    # one authz reused/valid, the other still to solve
    assert next_step("pending", [az("valid", "valid"), az()], False) is Step.SOLVE


def test_ready_processing_valid() -> None:
    assert next_step("ready", [az("valid", "valid")], False) is Step.FINALIZE
    assert next_step("processing", [], False) is Step.WAIT_ORDER
    assert next_step("valid", [], False) is Step.WAIT_ORDER
    assert next_step("valid", [], True) is Step.DOWNLOAD


def test_dead_orders() -> None:
    for status in ("invalid", "expired", "revoked", "deactivated"):
        assert next_step(status, [], False) is Step.DEAD
    assert next_step("pending", [az("invalid", "invalid")], False) is Step.DEAD
    assert next_step("pending", [az("expired", "pending")], False) is Step.DEAD


def test_dead_reason_names_the_failing_authorization() -> None:
    msg = dead_reason("invalid", [az("valid", "valid"),
                                  az("invalid", "invalid", wildcard=True, error="no TXT")], "")
    assert "*.gw.test" in msg and "invalid" in msg and "no TXT" in msg
    assert dead_reason("invalid", [], "boom") == "order is invalid: boom"
