"""What a certificate file says about itself that the store does not keep: its issuer.

Read from the PEM certd wrote (public data), cached by path and modification time so a
listing does not re-parse unchanged files, and bounded so it cannot grow without end.
"""

from __future__ import annotations

import functools
import os

from cryptography import x509
from cryptography.x509.oid import NameOID


@functools.lru_cache(maxsize=1024)
def _issuer(path: str, mtime_ns: int) -> str | None:
    try:
        with open(path, "rb") as f:
            leaf = x509.load_pem_x509_certificates(f.read())[0]
    except (OSError, ValueError, IndexError):
        return None
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        names = leaf.issuer.get_attributes_for_oid(oid)
        if names:
            return str(names[0].value)
    return leaf.issuer.rfc4514_string() or None


def certificate_issuer(path: str) -> str | None:
    """The issuer's common name (else organization, else DN) of the leaf in ``path``.

    ``None`` when there is no file yet or it cannot be read.
    """
    if not path:
        return None
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _issuer(path, mtime)
