"""The hand-off message (``proxy.handoff.encode``/``decode``): what a worker sends with a socket."""

from __future__ import annotations

import struct

import pytest

from proxy.handoff import HandoffError, decode, encode


@pytest.mark.parametrize("addr", [("127.0.0.1", 443), ("::1", 1), ("fe80::1%eth0", 65535),
                                  ("2001:db8:ffff:ffff:ffff:ffff:255.255.255.255", 8443)])
def test_round_trip(addr: tuple[str, int]) -> None:
    assert decode(encode(addr, 1234.5678)) == (addr, 1234.5678)


@pytest.mark.parametrize(("data", "why"), [
    (b"", "0 bytes"),
    (struct.pack("!dH", 1.0, 443), "10 bytes"),  # no address
    (struct.pack("!dH", 1.0, 443) + b"1" * 65, "75 bytes"),
    (struct.pack("!dH", 1.0, 443) + b"\xc3\xa9", "not ASCII"),
])
def test_what_is_not_a_hand_off_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(HandoffError, match=why):
        decode(data)


def test_an_address_too_long_is_refused_before_sending() -> None:
    with pytest.raises(HandoffError, match="too long"):
        encode(("x" * 65, 1), 0.0)
