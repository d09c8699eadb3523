"""The sans-IO ClientHello reader on real hellos (made by the ssl module) and on garbage."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import clienthello as ch


def real_hello(sni: str | None = "alice.gw.test", alpn: list[str] | None = None,
               tls13_only: bool = False) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake message re-framed into records of ``size`` bytes (legal TLS)."""
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        frag = body[i : i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def test_real_hello_sni_and_alpn() -> None:
    data = real_hello("Alice.GW.test", ["h2", "http/1.1"])
    got = ch.parse(data)
    assert isinstance(got, ch.ClientHello)
    assert got.server_name == "alice.gw.test"
    assert got.alpn == ("h2", "http/1.1")
    assert got.length == len(data)


def test_no_sni_and_no_alpn() -> None:
    got = ch.parse(real_hello(None))
    assert isinstance(got, ch.ClientHello)
    assert got.server_name is None and got.alpn == ()


def test_every_prefix_needs_more_and_bytes_after_are_ignored() -> None:
    data = real_hello("bob.gw.test", tls13_only=True)
    for n in range(len(data)):
        assert ch.parse(data[:n]) is ch.NEED_MORE, n
    got = ch.parse(data + b"\x17\x03\x03\x00\x05hello")
    assert isinstance(got, ch.ClientHello) and got.length == len(data)


@pytest.mark.parametrize("size", [1, 7, 100, 511])
def test_hello_fragmented_over_records(size: int) -> None:
    data = split_records(real_hello("frag.gw.test", ["http/1.1"]), size)
    got = ch.parse(data)
    assert isinstance(got, ch.ClientHello)
    assert (got.server_name, got.alpn, got.length) == ("frag.gw.test", ("http/1.1",), len(data))
    assert ch.parse(data[: len(data) - 1]) is ch.NEED_MORE


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",  # plain HTTP on the TLS port
    b"\x80\x2e\x01\x03\x01",  # SSLv2-style hello
    b"\x16\x02\x00\x00\x10",  # not version 3
    b"\x16\x03\x01\x00\x00",  # empty record
    b"\x16\x03\x01\x48\x01",  # record longer than 2^14
    b"\x17\x03\x03\x00\x10" + b"x" * 16,  # application data first
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
    b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # hello length beyond the cap
])
def test_garbage_fails_fast(data: bytes) -> None:
    with pytest.raises(ch.ClientHelloError):
        ch.parse(data)


def test_first_byte_decides() -> None:
    with pytest.raises(ch.ClientHelloError):
        ch.parse(b"G")
    assert ch.parse(b"\x16") is ch.NEED_MORE
    assert ch.parse(b"") is ch.NEED_MORE


def _hello_with(exts: bytes, tail: bytes = b"") -> bytes:
    """A hand-built minimal ClientHello with these extensions (and ``tail`` after them)."""
    body = (b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts + tail)
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg


def _sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    sni = struct.pack("!H", len(entry)) + entry
    return struct.pack("!HH", 0, len(sni)) + sni


def test_hand_built_hello_and_bad_names() -> None:
    got = ch.parse(_hello_with(_sni_ext(b"shop.example.org.")))
    assert isinstance(got, ch.ClientHello) and got.server_name == "shop.example.org"
    for bad in (b"", b"a..b", b"-a.b", b"\xc3\xa9.example", b"a b.example", b"x" * 64 + b".io"):
        with pytest.raises(ch.ClientHelloError):
            ch.parse(_hello_with(_sni_ext(bad)))


def test_duplicate_extension_and_trailing_bytes_refused() -> None:
    ext = _sni_ext(b"a.example")
    assert isinstance(ch.parse(_hello_with(ext)), ch.ClientHello)
    with pytest.raises(ch.ClientHelloError):
        ch.parse(_hello_with(ext + ext))
    with pytest.raises(ch.ClientHelloError):
        ch.parse(_hello_with(ext, tail=b"\x00"))
    with pytest.raises(ch.ClientHelloError):
        ch.parse(_hello_with(ext[:-1]))  # extension block shorter than it claims


def test_alert_record() -> None:
    assert ch.alert(ch.ALERT_UNRECOGNIZED_NAME) == b"\x15\x03\x03\x00\x02\x02\x70"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        got = ch.parse(data)
    except ch.ClientHelloError:
        return
    assert got is ch.NEED_MORE or isinstance(got, ch.ClientHello)


_HELLO = real_hello("fuzz.gw.test", ["h2", "http/1.1"])


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(_HELLO) - 1), st.integers(0, 255), st.integers(0, len(_HELLO)))
def test_mutated_real_hello_never_crashes(pos: int, value: int, cut: int) -> None:
    data = bytearray(_HELLO)
    data[pos] = value
    try:
        got = ch.parse(bytes(data[:cut]))
    except ch.ClientHelloError:
        return
    if isinstance(got, ch.ClientHello):
        assert got.length <= cut
        assert got.server_name is None or ch.is_host_name(got.server_name)
