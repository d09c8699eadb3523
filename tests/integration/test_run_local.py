"""scripts/run-local's Pebble roots file, written by scripts/pebble_root.py, with a real Pebble."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from scripts.pebble_root import merge, pem_blocks
from tests.pebble import requires_pebble, start_pebble
from tests.support import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pebble_root.py"


def _write(mgmt: str, ca: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), mgmt, str(ca), str(out)],
                          capture_output=True, text=True, timeout=60)


@requires_pebble
def test_every_start_writes_the_current_root_first_and_keeps_the_earlier(
    tmp_path: Path,
) -> None:
    out = tmp_path / "pebble-roots.pem"
    roots: list[bytes] = []
    for run in range(2):  # a restart: Pebble makes a new root
        with start_pebble(tmp_path / f"p{run}", ("127.0.0.1", free_port())) as pb:
            r = _write(pb.mgmt, pb.ca_bundle, out)
            assert r.returncode == 0, r.stderr
            roots.append(pem_blocks(pb.root_pem())[0])
            assert pem_blocks(out.read_bytes())[0] == roots[-1]  # the current root first
    assert roots[0] != roots[1]
    assert pem_blocks(out.read_bytes()) == [roots[1], roots[0]]
    for pem in roots:
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.issuer == cert.subject  # a self-signed root, as curl --cacert wants
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_a_failure_is_one_line_and_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "roots.pem"
    out.write_bytes(b"old\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # no trust for Pebble's listener: refused before any request
    r = _write(f"https://127.0.0.1:{free_port()}", ca, out)
    assert r.returncode == 1 and r.stderr.startswith("pebble_root: ")
    assert "Traceback" not in r.stderr and out.read_bytes() == b"old\n"


def _pem(n: int) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\nA" + str(n).encode() + b"\n-----END CERTIFICATE-----\n"


def test_merge_puts_the_current_first_without_repeats_and_bounded() -> None:
    assert merge(_pem(1), b"") == _pem(1)
    assert merge(_pem(2), _pem(1)) == _pem(2) + _pem(1)
    assert merge(_pem(1), _pem(2) + _pem(1)) == _pem(1) + _pem(2)
    many = b"".join(_pem(i) for i in range(20))
    assert pem_blocks(merge(_pem(99), many, keep=8)) == [_pem(99)] + [_pem(i) for i in range(7)]
    with pytest.raises(ValueError, match="one certificate"):
        merge(b"<html>not a cert</html>", b"")
