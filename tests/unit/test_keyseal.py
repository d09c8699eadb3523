"""Private keys at rest: sealed with the fleet's key file, bound to their slot, and never
echoed in an error."""

from __future__ import annotations

import base64

import pytest

from webgateway.keyseal import KeySeal, KeySealError, parse_key_file, slot

PEM = (b"-----BEGIN PRIVATE KEY-----\n"
       b"TUlJQ2VRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NBbU13Z2dKZkFnRUFBb0dCQU0=\n"
       b"-----END PRIVATE KEY-----\n")
SECRET = bytes(range(32))


def test_sealed_round_trip_is_random_and_hides_the_key() -> None:
    s = KeySeal(SECRET)
    a, b = s.seal(slot("cert", "zone"), PEM), s.seal(slot("cert", "zone"), PEM)
    assert a != b and a.startswith("aesgcm1:")  # a fresh nonce each time
    assert b"PRIVATE" not in a.encode() and b"TUlJQ2VR" not in a.encode()
    assert s.open(slot("cert", "zone"), a) == PEM == s.open(slot("cert", "zone"), b)


def test_wrong_slot_wrong_key_no_key_tampering_each_refused_without_the_key() -> None:
    s = KeySeal(SECRET)
    sealed = s.seal(slot("cert", "zone"), PEM)
    raw = bytearray(base64.b64decode(sealed.removeprefix("aesgcm1:")))
    raw[-1] ^= 1
    tampered = "aesgcm1:" + base64.b64encode(bytes(raw)).decode()
    cases = [
        (s, slot("cert", "shop.example.org"), sealed, "same file"),
        (KeySeal(bytes(32)), slot("cert", "zone"), sealed, "same file"),
        (KeySeal(), slot("cert", "zone"), sealed, "has none"),
        (s, slot("cert", "zone"), tampered, "same file"),
        (s, slot("cert", "zone"), "aesgcm1:%%%", "same file"),
        (s, slot("cert", "zone"), PEM.decode(), "unknown format"),
    ]
    for seal, where, stored, why in cases:
        with pytest.raises(KeySealError) as e:
            seal.open(where, stored)
        assert why in str(e.value)
        assert "TUlJQ2VR" not in str(e.value) and stored not in str(e.value)


def test_plain_keys_open_everywhere_so_a_key_file_can_come_later() -> None:
    stored = KeySeal().seal(slot("order", "zone"), PEM)
    assert stored == "plain:" + PEM.decode()
    assert KeySeal(SECRET).open(slot("order", "zone"), stored) == PEM
    assert not KeySeal().encrypts and KeySeal(SECRET).encrypts


@pytest.mark.parametrize("data", [
    SECRET, base64.b64encode(SECRET), base64.b64encode(SECRET) + b"\n",
    SECRET.hex().encode(), SECRET.hex().encode() + b"\n", SECRET.hex().upper().encode(),
])
def test_key_file_raw_base64_or_hex(data: bytes) -> None:
    assert parse_key_file(data) == SECRET


@pytest.mark.parametrize("data", [
    b"", b"short", base64.b64encode(bytes(16)), bytes(31), SECRET + b"\0", b"\xff" * 40,
    b"correct horse battery staple 12!",  # 32 characters of text: a passphrase, not a key
    b"0123456789abcdef0123456789abcdef",  # 32 hex digits: 16 bytes, not the key's 32
    b"correct horse battery staple 1!\n",  # 31 characters and a newline
    base64.b64encode(SECRET) + b"\r\n", base64.b64encode(SECRET) + b"\n\n",
    b" " + base64.b64encode(SECRET), base64.b64encode(SECRET).replace(b"=", b"A"),
    base64.urlsafe_b64encode(b"\xff" * 32),  # not the standard alphabet
    SECRET.hex().encode() + b"\r\n", " ".join(f"{b:02x}" for b in SECRET).encode(),
    SECRET.hex().encode()[:-1] + b"g",
])
def test_key_file_in_any_other_form_is_refused_saying_how_to_make_one(data: bytes) -> None:
    with pytest.raises(ValueError, match="exactly 32 random bytes") as e:
        parse_key_file(data)
    assert "head -c 32 /dev/urandom" in str(e.value)
