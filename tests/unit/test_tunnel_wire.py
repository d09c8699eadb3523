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


def opened() -> tuple[wire.Connection, wire.Connection]:
    """A node and a gateway with one stream open."""
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    node.receive(gw.accept())
    assert node.receive(gw.open()) == [wire.OPEN]
    return node, gw


def joined(events: list[wire.Event]) -> bytes:
    out = b""
    for ev in events:
        assert isinstance(ev, wire.Data)
        out += bytes(ev.data)
    return out


def test_full_exchange_then_streams_one_after_the_other() -> None:
    node, gw = pair()
    [hello] = gw.receive(node.hello("alice", "wg_secret", SESSION))
    assert hello == wire.Hello("alice", "wg_secret", SESSION)
    assert "wg_secret" not in repr(hello)
    assert gw.state is wire.State.AUTH
    assert node.receive(gw.accept()) == [wire.ACCEPTED]
    for _ in range(3):  # the same connection serves stream after stream
        assert gw.receive(node.ping()) == [wire.PING]
        assert node.receive(gw.pong()) == [wire.PONG]
        # the client's first bytes follow OPEN at once, in the same read or the next ones
        request = gw.open() + b"".join(gw.data(b"GET / HTTP/1.1\r\n"))
        assert node.receive(request) == [wire.OPEN, wire.Data(b"GET / HTTP/1.1\r\n")]
        # stream bytes that look like frames are only bytes
        assert joined(node.receive(b"".join(gw.data(b"\x03\x00\x01x")))) == b"\x03\x00\x01x"
        assert joined(gw.receive(b"".join(node.data(b"HTTP/1.1 200 OK\r\n")))) == (
            b"HTTP/1.1 200 OK\r\n")
        assert gw.receive(node.end()) == [wire.END]  # the backend closed first
        assert node.state is gw.state is wire.State.STREAM
        assert node.receive(gw.end()) == [wire.ENDED]  # it answers the node's: over
        assert node.state is gw.state is wire.State.IDLE


def test_open_carries_the_clients_first_bytes_in_the_same_buffer() -> None:
    def ready() -> tuple[wire.Connection, wire.Connection]:
        node, gw = pair()
        gw.receive(node.hello("alice", "tok", SESSION))
        node.receive(gw.accept())
        return node, gw

    node, gw = ready()
    big = bytes(range(256)) * 300  # over SMALL and over one frame's length
    sent = gw.open([b"PROXY header\r\n", b"GET / HTTP/1.1\r\n", big])
    assert gw.state is wire.State.STREAM
    events = node.receive(sent)
    assert events[0] == wire.OPEN
    assert joined(events[1:]) == b"PROXY header\r\nGET / HTTP/1.1\r\n" + big
    assert node.receive(gw.end()) == [wire.END]
    # the same bytes read one at a time: the same stream
    node, _ = ready()
    events = [ev for i in range(len(sent)) for ev in node.receive(sent[i:i + 1])]
    assert events[0] == wire.OPEN
    assert joined(events[1:]) == b"PROXY header\r\nGET / HTTP/1.1\r\n" + big
    assert ready()[1].open([]) == ready()[1].open()  # nothing to carry: OPEN alone


def test_ends_may_cross_and_what_crosses_an_end_is_dropped() -> None:
    node, gw = opened()
    late = b"".join(node.data(b"late response bytes"))
    g_end, n_end = gw.end(), node.end()  # both sides close at once
    assert gw.receive(late + n_end) == [wire.ENDED]  # the data crossed our END: dropped
    assert node.receive(g_end) == [wire.ENDED]
    assert node.state is gw.state is wire.State.IDLE
    with pytest.raises(RuntimeError):
        gw.data(b"x")  # no stream any more


def test_nothing_is_sent_after_our_own_end() -> None:
    node, _ = opened()
    assert node.end() and node.end() == b""
    assert node.data(b"more") == []


def test_a_large_write_is_sent_in_frames_without_copying() -> None:
    node, gw = opened()
    payload = bytes(range(256)) * 1024  # 256 KiB
    parts = node.data(payload)
    assert len(parts) == 2 * 5  # four full frames and a rest, each header + a view
    assert all(isinstance(p, memoryview) for p in parts[1::2])
    wire_bytes = b"".join(parts)
    assert joined(gw.receive(wire_bytes)) == payload
    # split anywhere, byte by byte at a frame boundary: the same bytes come out
    events: list[wire.Event] = []
    cut = wire.MAX_DATA + 1
    for chunk in (wire_bytes[:cut], *[wire_bytes[i:i + 1] for i in range(cut, cut + 8)],
                  wire_bytes[cut + 8:]):
        events += gw.receive(chunk)
    assert joined(events) == payload


def test_stream_frames_out_of_place_are_refused() -> None:
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    node.receive(gw.accept())
    with pytest.raises(wire.ProtocolError, match="DATA is not expected"):
        gw.receive(b"\x09\x00\x01x")  # DATA while idle
    node, gw = opened()
    with pytest.raises(wire.ProtocolError, match="empty DATA"):
        gw.receive(b"\x09\x00\x00")
    node, gw = opened()
    gw.receive(node.end())
    with pytest.raises(wire.ProtocolError, match="DATA after END"):
        gw.receive(b"\x09\x00\x01x")
    node, gw = opened()
    gw.receive(node.end())
    with pytest.raises(wire.ProtocolError, match="END twice"):
        gw.receive(wire.frame(wire.Kind.END))
    node, gw = opened()
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        gw.receive(b"HTTP/1.1 200 OK\r\n")  # a node sending raw bytes (version 2)
    assert gw.state is wire.State.CLOSED


def test_a_full_pool_turns_a_good_hello_away() -> None:
    node, gw = pair()
    gw.receive(node.hello("alice", "tok", SESSION))
    assert node.receive(gw.full()) == [wire.FULL]
    assert gw.state is node.state is wire.State.CLOSED


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
    assert gw.state is wire.State.STREAM


def test_node_refusal_of_a_stream() -> None:
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
        (b"\x0b\x00\x00", "unknown frame kind"),
        (b"\x04\x00\x00", "not expected"),  # PING before HELLO
        (b"\x01\x00\x02\x01\x00", "version 1 is not supported"),  # waited for OPENED
        (b"\x01\x00\x02\x02\x00", "version 2 is not supported"),  # raw bytes after OPEN
        (b"\x01\x00\x02\x04\x00", "not supported"),
        (b"\x01\x00\x03\x03\x05a", "too short"),
        (wire.frame(wire.Kind.HELLO, b"\x03\x01A\x01t" + SESSION), "no valid label"),
        (wire.frame(wire.Kind.HELLO, b"\x03\x01a\x01\x00" + SESSION), "no valid token"),
        (wire.frame(wire.Kind.HELLO, b"\x03\x01a\x01t" + SESSION[:3]), "wrong length"),
        (wire.frame(wire.Kind.HELLO, b"\x03\x01\xff\x01t" + SESSION), "non-ASCII"),
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


@given(st.binary(max_size=2000), st.booleans())
def test_arbitrary_bytes_never_crash(data: bytes, streaming: bool) -> None:
    if streaming:
        _, gw = opened()
    else:
        gw = wire.Connection(wire.Role.GATEWAY)
    try:
        events = gw.receive(data)
    except wire.ProtocolError:
        assert gw.state is wire.State.CLOSED
    else:
        assert len(joined([e for e in events if isinstance(e, wire.Data)])) <= len(data)
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


def test_small_frames_of_one_read_come_out_as_one_write() -> None:
    node, gw = opened()
    head, body = b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 1024
    both = b"".join(node.data(head) + node.data(body))
    assert gw.receive(both + node.end()) == [wire.Data(head + body), wire.END]
    big = b"y" * 40000
    node, gw = opened()
    events = gw.receive(b"".join(node.data(big) + node.data(big)))
    assert [len(e.data) for e in events if isinstance(e, wire.Data)] == [40000, 40000]


def test_the_next_stream_may_follow_the_last_end_in_one_read() -> None:
    """The gateway OPENs the connection again as soon as END went both ways; the node
    may read that END, OPEN and the request at once. ENDED says the old stream is over
    although the connection is in the new one by the time the events are handled (the
    node then answered the new stream's first bytes with END: an empty reply)."""
    node, gw = opened()
    gw.receive(node.end())
    again = gw.end() + gw.open() + b"".join(gw.data(b"GET / HTTP/1.1\r\n"))
    assert node.receive(again) == [wire.ENDED, wire.OPEN, wire.Data(b"GET / HTTP/1.1\r\n")]
    assert node.state is wire.State.STREAM and not node.sent_end and not node.got_end
