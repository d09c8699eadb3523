"""Keys and CSRs as PEM: round trips, refusals that say nothing of the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from certd.certkeys import csr_pem, key_pem, load_key, new_key, read_key_pem


def test_key_round_trip_and_the_legacy_file(tmp_path: Path) -> None:
    key = new_key()
    pem = key_pem(key)
    assert load_key(pem).private_numbers() == key.private_numbers()
    f = tmp_path / "acme-account.key"
    assert read_key_pem(f) is None
    f.write_bytes(b"not a key")
    assert read_key_pem(f) is None
    f.write_bytes(pem)
    assert read_key_pem(f) == pem


def test_a_bad_key_is_refused_without_echoing_it() -> None:
    secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError) as e:
        load_key(secret)
    assert "c2VjcmV0" not in str(e.value)


def test_csr_carries_every_name() -> None:
    csr = x509.load_pem_x509_csr(csr_pem(new_key(), ("gw.test", "*.gw.test")))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["gw.test", "*.gw.test"]
    assert csr.is_signature_valid
