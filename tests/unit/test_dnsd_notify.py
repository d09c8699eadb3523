"""The NOTIFY scheduler: serial changes, acknowledgements and a clock in, sends out."""

from __future__ import annotations

import itertools

import dns.flags
import dns.message
import dns.opcode
import dns.tsig

from dnsd.notify import NotifySchedule, notify_message
from webgateway.addresses import parse_hostport

A = parse_hostport("192.0.2.31:53")
B = parse_hostport("[2001:db8::32]:53")


def test_the_first_change_goes_out_at_once_to_every_secondary() -> None:
    s = NotifySchedule((A, B))
    assert s.next_due() is None and s.due(0.0) == []
    s.changed(5, 100.0)
    assert s.due(100.0) == [(A, 5), (B, 5)]
    assert s.due(100.0) == []


def test_a_burst_gives_at_most_one_notify_per_half_second() -> None:
    s = NotifySchedule((A,))
    sent = []
    now = 0.0
    for serial in range(1, 101):  # 100 writes, one every 10 ms
        s.changed(serial, now)
        s.acked(A, serial - 1, now)
        sent += [(now, x) for x in s.due(now)]
        for t, (_, ser) in sent[-1:]:
            if t == now:
                s.acked(A, ser, now)  # acknowledged at once
        now += 0.01
    while (nxt := s.next_due()) is not None and nxt < 10:
        now = max(now, nxt)
        for _, ser in s.due(now):
            sent.append((now, (A, ser)))
            s.acked(A, ser, now)
    assert sent[0] == (0.0, (A, 1))
    assert sent[-1][1] == (A, 100)  # the newest serial always goes out in the end
    assert len(sent) <= 1 + 1 / 0.5 + 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
    assert all(g >= 0.5 - 1e-9 for g in gaps), gaps


def test_unacknowledged_notifies_are_retried_with_backoff_then_given_up() -> None:
    s = NotifySchedule((A,), first_retry=1.0, max_backoff=8.0, max_attempts=6)
    s.changed(7, 0.0)
    times = []
    now = 0.0
    for _ in range(50):
        nxt = s.next_due()
        if nxt is None:
            break
        now = nxt
        if s.due(now):
            times.append(now)
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    assert s.given_up == 1 and s.next_due() is None


def test_an_ack_of_an_older_serial_keeps_the_newer_one_pending() -> None:
    s = NotifySchedule((A,))
    s.changed(1, 0.0)
    assert s.due(0.0) == [(A, 1)]
    s.changed(2, 0.1)
    s.acked(A, 1, 0.2)
    assert s.next_due() == 0.5
    assert s.due(0.5) == [(A, 2)]
    s.acked(A, 2, 0.6)
    assert s.next_due() is None
    s.acked(parse_hostport("192.0.2.99:53"), 2, 0.7)  # a stranger's ack changes nothing


def test_the_message_is_a_signed_notify_with_the_serial() -> None:
    m = notify_message("gw.test", 42, 4242)
    key = dns.tsig.Key("xfr.", bytes(range(32)), "hmac-sha256.")
    m.use_tsig(key)
    back = dns.message.from_wire(m.to_wire(), keyring={key.name: key})
    assert back.opcode() == dns.opcode.NOTIFY and back.flags & dns.flags.AA
    assert back.id == 4242 and back.answer[0][0].serial == 42 and back.had_tsig
