"""What the certd integration tests share: where Pebble asks DNS, and how a test waits for
and checks a certificate."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.pebble import Pebble
from webgateway.config import Config
from webgateway.model import Certificate, CertState
from webgateway.store import Store


def dns_target(cfg: Config) -> tuple[str, int]:
    hp = cfg.dns.listen[0]
    return str(hp.host), hp.port


async def wait_cert(store: Store, cid: str, seconds: float = 60,
                    not_chain: str = "") -> Certificate:
    end = time.monotonic() + seconds
    last = None
    while time.monotonic() < end:
        last = await store.get_certificate(cid)
        if last is not None and last.state == CertState.VALID and last.chain != not_chain:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"certificate {cid} not valid after {seconds} s: {last}")


def verify_chain(pb: Pebble, cert: Certificate, tmp: Path) -> None:
    """openssl verify of the leaf against Pebble's root, intermediates from our chain file."""
    root = tmp / "root.pem"
    root.write_bytes(pb.root_pem())
    chain = x509.load_pem_x509_certificates(cert.chain.encode())
    assert len(chain) >= 2
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    (tmp / "inter.pem").write_bytes(b"".join(pem[1:]))
    (tmp / "leaf.pem").write_bytes(pem[0])
    r = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted",
                        str(tmp / "inter.pem"), str(tmp / "leaf.pem")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
