"""Keys, CSRs and chains as PEM bytes: what certd stores and the proxy loads.

Nothing here touches the disk but ``read_key_pem``, which imports the account key an
earlier build kept in a file. Keys are EC P-256 in PKCS#8 PEM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """An EC key from PEM; ValueError (saying nothing of the bytes) if it is not one."""
    try:
        key = serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError):
        raise ValueError("the stored private key is not a PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the stored private key is not an EC key")
    return key


def read_key_pem(path: Path) -> bytes | None:
    """The PEM of the EC key in ``path``, or None when there is none readable."""
    try:
        pem = path.read_bytes()
        load_key(pem)
    except (OSError, ValueError):
        return None
    return pem


def csr_pem(key: ec.EllipticCurvePrivateKey, domains: tuple[str, ...]) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ChainInfo:
    not_before: float
    not_after: float
    serial: int


def chain_info(fullchain: bytes) -> ChainInfo:
    """Validity and serial of the leaf (the first certificate of the chain)."""
    leaf = x509.load_pem_x509_certificates(fullchain)[0]
    return ChainInfo(
        leaf.not_valid_before_utc.timestamp(),
        leaf.not_valid_after_utc.timestamp(),
        leaf.serial_number,
    )


def leaf_matches_key(fullchain: bytes, key: ec.EllipticCurvePrivateKey) -> bool:
    leaf = x509.load_pem_x509_certificates(fullchain)[0]
    pub = leaf.public_key()
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(pub.public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt))
