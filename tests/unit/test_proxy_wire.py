"""PROXY v2 headers and the :80 request-head parser."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.proxyproto import SIGNATURE, header
from proxy.redirect import MAX_HEAD, BadRequest, parse_head, response


def test_proxy_v2_ipv4_and_ipv6() -> None:
    h = header(("192.0.2.1", 40000), ("203.0.113.10", 443))
    assert h[:12] == SIGNATURE and h[12] == 0x21 and h[13] == 0x11
    assert struct.unpack("!H", h[14:16])[0] == 12 == len(h) - 16
    assert h[16:24] == socket.inet_aton("192.0.2.1") + socket.inet_aton("203.0.113.10")
    assert struct.unpack("!HH", h[24:28]) == (40000, 443)
    h6 = header(("2001:db8::1", 1), ("2001:db8::2", 443))
    assert h6[13] == 0x21 and len(h6) == 16 + 36
    assert h6[16:32] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")


def test_proxy_v2_mapped_and_mixed_families() -> None:
    h = header(("::ffff:192.0.2.1", 5), ("192.0.2.9", 443))
    assert h[13] == 0x11 and h[16:20] == socket.inet_aton("192.0.2.1")
    local = header(("2001:db8::1", 5), ("192.0.2.9", 443))
    assert local == SIGNATURE + b"\x20\x00\x00\x00"
    assert header(None, None) == local


def test_request_head() -> None:
    assert parse_head(b"GET /a?b HTTP/1.1\r\nHost: Alice.GW.test:80\r\n") is None
    head = parse_head(b"GET /a?b HTTP/1.1\r\nHost: Alice.GW.test:80\r\nX: y\r\n\r\n")
    assert head is not None and (head.method, head.target, head.host) == (
        "GET", "/a?b", "alice.gw.test")
    head = parse_head(b"GET / HTTP/1.0\r\n\r\n")
    assert head is not None and head.host is None


@pytest.mark.parametrize("raw", [
    b"\x16\x03\x01\x02\x00",  # TLS on the HTTP port
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x.test\r\nLocation\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\n\r\n",
    b"GET / SPDY/3\r\n\r\n",
    b"GET " + b"a" * (MAX_HEAD + 10),
])
def test_bad_heads(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(raw)


def test_response_has_no_injection_room() -> None:
    r = response(301, "Moved Permanently", "https://a.gw.test/x")
    assert r.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"Location: https://a.gw.test/x\r\n" in r


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_heads_never_crash(raw: bytes) -> None:
    try:
        head = parse_head(raw)
    except BadRequest:
        return
    if head is not None and head.host is not None:
        assert "\r" not in head.host and "\n" not in head.host and " " not in head.host
