"""Keys, CSRs and the key/chain files the proxy loads.

Every file is written to a temporary name, fsynced and renamed, and the directory is
fsynced, so a crash leaves either the old file or the new one, never half of one. Keys
are created 0600 from the first byte (``os.open`` mode), never chmod-ed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 key at ``path``, created (0600) if missing or unreadable as a key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    except (OSError, ValueError, TypeError):
        pass
    key = new_key()
    write_atomic(path, key_pem(key), 0o600)
    return key


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


def file_stem(cert_id: str) -> str:
    """Certificate ids are ``zone`` or a validated fqdn: already safe as file names."""
    if not cert_id or "/" in cert_id or cert_id.startswith("."):
        raise ValueError(f"unsafe certificate id {cert_id!r}")
    return cert_id


def paths_for(certs_dir: Path, cert_id: str, serial: int) -> tuple[Path, Path]:
    """Versioned (chain, key) paths: a new pair never overwrites the pair being served."""
    tag = f"{serial:x}"[-16:]
    stem = file_stem(cert_id)
    return certs_dir / f"{stem}.{tag}.fullchain.pem", certs_dir / f"{stem}.{tag}.key.pem"


def pending_key_path(certs_dir: Path, cert_id: str) -> Path:
    return certs_dir / f"{file_stem(cert_id)}.pending.key.pem"
