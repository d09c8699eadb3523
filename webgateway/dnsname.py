"""Validation of the DNS names people hand us: user labels, zone names, custom domains.

Every check raises ``ValueError`` with a sentence that says what to fix, because these
messages go straight back to API clients and to the operator reading a config error.
"""

from __future__ import annotations

import hashlib
import re

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^(?:[a-z0-9_]|[a-z0-9_][a-z0-9_-]{0,61}[a-z0-9])$")

#: Labels no owner may take: they either carry the zone's own records or would let an
#: owner impersonate the operator (``www``, ``api``, mail and autodiscovery names).
RESERVED_LABELS = frozenset(
    {
        "_acme-challenge",
        "_acme",
        "www",
        "ns",
        "api",
        "admin",
        "mail",
        "smtp",
        "imap",
        "pop",
        "mx",
        "autoconfig",
        "autodiscover",
        "localhost",
        "wpad",
        "gateway",
        "status",
    }
)


def normalize(name: str) -> str:
    """Lower-case and strip one trailing dot: the form every name is stored in."""
    return name.strip().rstrip(".").lower() if name.strip() != "." else ""


def check_label(label: object) -> str:
    """A user label under the zone, per RFC 1123: a-z, 0-9 and '-', 1-63 characters."""
    if not isinstance(label, str):
        raise ValueError("a name must be a string")
    if label != label.lower():
        raise ValueError(f"{label!r}: use lower-case letters only")
    if not 1 <= len(label) <= 63:
        raise ValueError(f"{label!r}: a name is 1 to 63 characters long")
    if not _LABEL.match(label):
        raise ValueError(f"{label!r}: use only a-z, 0-9 and '-', and do not start or end with '-'")
    if label[2:4] == "--" and not label.startswith("xn--"):
        raise ValueError(f"{label!r}: '--' in positions 3-4 is reserved for IDNA (xn--)")
    return label


def check_domain(name: object, *, what: str = "domain") -> str:
    """A fully qualified host name (two labels at least), returned normalized."""
    if not isinstance(name, str):
        raise ValueError(f"a {what} must be a string")
    fqdn = normalize(name)
    if not fqdn:
        raise ValueError(f"the {what} is empty")
    if len(fqdn) > 253:
        raise ValueError(f"{name!r}: a {what} is at most 253 characters")
    labels = fqdn.split(".")
    if len(labels) < 2:
        raise ValueError(f"{name!r}: a {what} needs at least two labels, e.g. 'example.com'")
    for lab in labels:
        if not _HOST_LABEL.match(lab):
            raise ValueError(
                f"{name!r}: label {lab!r} must be 1-63 characters of a-z, 0-9, '-', '_'"
                " and not start or end with '-'"
            )
    if labels[-1].isdigit():
        raise ValueError(f"{name!r}: the last label of a {what} cannot be numeric")
    return fqdn


def is_within(name: str, zone: str) -> bool:
    """True when ``name`` is ``zone`` or below it (both normalized)."""
    return name == zone or name.endswith("." + zone)


def challenge_label(fqdn: str) -> str:
    """The label under ``_acme.ZONE`` that a custom domain's ``_acme-challenge`` CNAMEs to.

    Derived from the domain so it is stable across re-adds and restarts; it carries no
    secret because only the gateway can write the TXT behind it.
    """
    digest = hashlib.sha256(normalize(fqdn).encode()).hexdigest()
    return "d" + digest[:24]
