"""What a certificate says about itself that the store does not keep apart: its issuer.

Parsed from the chain in the store (public data), cached by the chain's text so a listing
does not re-parse unchanged certificates, and bounded so it cannot grow without end.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.x509.oid import NameOID


@functools.lru_cache(maxsize=1024)
def certificate_issuer(chain: str) -> str | None:
    """The issuer's common name (else organization, else DN) of the chain's leaf.

    ``None`` when there is no chain yet or it cannot be parsed.
    """
    if not chain:
        return None
    try:
        leaf = x509.load_pem_x509_certificates(chain.encode("ascii"))[0]
    except (ValueError, IndexError, UnicodeEncodeError):
        return None
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        names = leaf.issuer.get_attributes_for_oid(oid)
        if names:
            return str(names[0].value)
    return leaf.issuer.rfc4514_string() or None
