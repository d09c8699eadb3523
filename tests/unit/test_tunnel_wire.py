"""The tunnel protocol as a pure state machine: both roles driven against each other."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel import wire
from tunnel.backoff import Backoff

SESSION = bytes(range(16))


def pair() -> tuple[wire.Connection, wire.Connection]:
    return wire.Connection(wire.Role.NODE), wire.Connection(wire.Role.GATEWAY)


def test_full_exchange_then_raw_bytes() -> None:
    node, gw = pair()
    [hello] = gw.receive(node.hello("alice", "wg_secret", SESSION))
    assert hello == wire.Hello("alice", "wg_secret", SESSION)
    assert "wg_secret" not in repr(hello)
    assert gw.state is wire.State.AUTH
    assert node.receive(gw.accept()) == [wire.ACCEPTED]
    assert gw.receive(node.ping()) == [wire.PING]
    assert node.receive(gw.pong()) == [wire.PONG]
    # the client's first bytes follow OPEN at once, in the same read or the next ones
    assert node.receive(gw.open() + b"GET / HTTP/1.1\r\n") == [
        wire.OPEN, wire.Data(b"GET / HTTP/1.1\r\n")]
    assert node.receive(b"\x06\x00\x00") == [wire.Data(b"\x06\x00\x00")]  # looks like OPEN
    assert node.receive(b"\x03\x00\x01x") == [wire.Data(b"\x03\x00\x01x")]  # like REFUSE
    # the gateway reads frames until OPENED; OPENED and the first raw bytes may share a read
    assert gw.receive(node.opened() + b"\x03\x00\x05SSH-2.0") == [
        wire.OPENED, wire.Data(b"\x03\x00\x05SSH-2.0")]
    assert gw.receive(b"\x01\x02") == [wire.Data(b"\x01\x02")]
    assert gw.state is node.state is wire.State.RAW


def test_a_full_pool_turns_a_good_hello_away() -> None:
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    assert node.receive(gw.full()) == [wire.FULL]
    assert gw.state is node.state is wire.State.CLOSED


def test_gateway_reads_frames_until_opened() -> None:
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    node.receive(gw.accept())
    gw.open()
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        gw.receive(b"HTTP/1.1 200 OK\r\n")  # a node answering before OPENED
    assert gw.state is wire.State.CLOSED


def test_frames_split_byte_by_byte() -> None:
    node, gw = pair()
    events: list[wire.Event] = []
    for b in node.hello("bob", "t" * wire.MAX_TOKEN, SESSION):
        events += gw.receive(bytes([b]))
    assert events == [wire.Hello("bob", "t" * wire.MAX_TOKEN, SESSION)]


def test_ping_crossing_open_is_dropped() -> None:
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    node.receive(gw.accept())
    ping = node.ping()
    gw.open()
    assert gw.receive(ping) == []
    assert gw.state is wire.State.OPENING


def test_node_refusal_while_opening() -> None:
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    node.receive(gw.accept())
    node.receive(gw.open())
    [ev] = gw.receive(node.refuse("connect refused\x00\n"))
    assert ev == wire.Refused("connect refused??")
    assert gw.state is node.state is wire.State.CLOSED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\xff\xff", "exceeds"),  # oversized frame header
        (b"\x09\x00\x00", "unknown frame kind"),
        (b"\x04\x00\x00", "not expected"),  # PING before HELLO
        (b"\x01\x00\x02\x01\x00", "version 1 is not supported"),  # waited for OPENED
        (b"\x01\x00\x02\x03\x00", "not supported"),
        (b"\x01\x00\x03\x02\x05a", "too short"),
        (wire.frame(wire.Kind.HELLO, b"\x02\x01A\x01t" + SESSION), "no valid label"),
        (wire.frame(wire.Kind.HELLO, b"\x02\x01a\x01\x00" + SESSION), "no valid token"),
        (wire.frame(wire.Kind.HELLO, b"\x02\x01a\x01t" + SESSION[:3]), "wrong length"),
        (wire.frame(wire.Kind.HELLO, b"\x02\x01\xff\x01t" + SESSION), "non-ASCII"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds"),  # a browser
    ],
)
def test_gateway_refuses_malformed_input(data: bytes, reason: str) -> None:
    gw = wire.Connection(wire.Role.GATEWAY)
    with pytest.raises(wire.ProtocolError, match=reason):
        gw.receive(data)
    assert gw.state is wire.State.CLOSED
    assert gw.receive(b"more") == []


def test_node_refuses_unexpected_frames() -> None:
    node = wire.Connection(wire.Role.NODE)
    node.hello("alice", "tok", SESSION)
    with pytest.raises(wire.ProtocolError, match="OPEN is not expected"):
        node.receive(wire.frame(wire.Kind.OPEN))
    node2 = wire.Connection(wire.Role.NODE)
    node2.hello("alice", "tok", SESSION)
    with pytest.raises(wire.ProtocolError, match="carries no payload"):
        node2.receive(wire.frame(wire.Kind.ACCEPT, b"x"))


def test_bytes_before_open_are_bounded() -> None:
    gw = wire.Connection(wire.Role.GATEWAY)
    with pytest.raises(wire.ProtocolError):
        gw.receive(b"\x01\x02\x00" + b"x" * 600)


def test_senders_check_role_and_state() -> None:
    node, gw = pair()
    with pytest.raises(RuntimeError):
        gw.open()  # not authenticated
    with pytest.raises(RuntimeError):
        node.ping()  # not accepted
    with pytest.raises(ValueError):
        node.hello("Not A Label", "tok", SESSION)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    gw = wire.Connection(wire.Role.GATEWAY)
    try:
        gw.receive(data)
    except wire.ProtocolError:
        assert gw.state is wire.State.CLOSED
    assert len(gw._buf) <= 3 + wire.MAX_PAYLOAD


def test_backoff_grows_with_jitter_and_caps() -> None:
    lo = Backoff(base=0.25, cap=30.0, rng=lambda: 0.0)
    hi = Backoff(base=0.25, cap=30.0, rng=lambda: 0.999)
    lows = [lo.next() for _ in range(12)]
    highs = [hi.next() for _ in range(12)]
    assert lows[:3] == [0.125, 0.25, 0.5]
    assert all(a < b for a, b in zip(lows, highs, strict=True))
    assert max(highs) <= 30.0 and highs[-1] > 29.9
    lo.reset()
    assert lo.next() == 0.125
