"""Key and chain files: modes, atomic replacement, CSR content, versioned names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from certd.certfiles import (
    csr_pem,
    load_or_create_key,
    paths_for,
    pending_key_path,
    write_atomic,
)


def test_key_created_0600_and_reused(tmp_path: Path) -> None:
    p = tmp_path / "k.pem"
    k1 = load_or_create_key(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    k2 = load_or_create_key(p)
    assert k1.private_numbers() == k2.private_numbers()


def test_corrupt_key_is_replaced(tmp_path: Path) -> None:
    p = tmp_path / "k.pem"
    p.write_bytes(b"not a key")
    load_or_create_key(p)
    assert b"PRIVATE KEY" in p.read_bytes()


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, b"one", 0o644)
    write_atomic(p, b"two", 0o600)
    assert p.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_csr_carries_every_name(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    csr = x509.load_pem_x509_csr(csr_pem(key, ("gw.test", "*.gw.test")))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["gw.test", "*.gw.test"]
    assert csr.is_signature_valid


def test_versioned_paths_differ_per_serial_and_refuse_unsafe_ids(tmp_path: Path) -> None:
    a = paths_for(tmp_path, "zone", 0x1234)
    b = paths_for(tmp_path, "zone", 0x5678)
    assert a != b and all(p.parent == tmp_path for p in (*a, *b))
    assert pending_key_path(tmp_path, "shop.example.org").name.startswith("shop.example.org")
    for bad in ("../x", "", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            paths_for(tmp_path, bad, 1)
