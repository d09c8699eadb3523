"""Validation of the DNS names people hand us: user labels, zone names, custom domains.

Every check raises ``ValueError`` with a sentence that says what to fix, because these
messages go straight back to API clients and to the operator reading a config error.
"""

from __future__ import annotations

import re
import secrets

import idna

#: The form of a user label (RFC 1123), for ``fullmatch``: ``$`` would also accept a
#: trailing newline. Shared with the tunnel's HELLO check.
LABEL_FORM = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"[a-z0-9_]|[a-z0-9_][a-z0-9_-]{0,61}[a-z0-9]")

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


CHALLENGE_PREFIX = "_acme-challenge."

#: Special-use suffixes (RFC 6761, 6762, 7686, 8375, 9476 and ICANN's ``.internal``): no
#: public CA issues for them, so a custom domain under one could never get its certificate.
SPECIAL_USE_SUFFIXES = (
    "onion", "local", "localhost", "invalid", "test", "example", "home.arpa", "internal", "alt",
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
    if not LABEL_FORM.fullmatch(label):
        raise ValueError(f"{label!r}: use only a-z, 0-9 and '-', and do not start or end with '-'")
    _check_idna(label, "")
    return label


def _check_idna(label: str, where: str) -> None:  # where: the domain it is in, if any
    """Refuse '--' in positions 3-4 unless it is a valid IDNA A-label (``xn--``): CAs refuse
    both a reserved-format label and an ``xn--`` that is not the encoding of a U-label.
    The ``idna`` package (IDNA 2008 + UTS 46 tables) decides validity, and the A-label must
    be the canonical encoding of what it decodes to."""
    if label[2:4] != "--":
        return
    at = f"{where}: label " if where else ""
    if not label.startswith("xn--"):
        raise ValueError(f"{at}{label!r}: '--' in positions 3-4 is reserved for IDNA (xn--)")
    try:
        ok = idna.encode(idna.decode(label)).decode("ascii") == label
    except (idna.IDNAError, UnicodeError) as e:
        raise ValueError(f"{at}{label!r} is not a valid IDNA A-label: {e}") from None
    if not ok:
        raise ValueError(f"{at}{label!r} is not the canonical IDNA encoding of its name")


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
        if not _HOST_LABEL.fullmatch(lab):
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


def special_use_suffix(name: str) -> str | None:
    """The special-use suffix ``name`` (normalized) falls under, if any."""
    return next((s for s in SPECIAL_USE_SUFFIXES if is_within(name, s)), None)


def check_custom_domain(name: object, zone: str) -> str:
    """A custom domain an owner may claim: one a public CA can issue a certificate for.

    Refused, each with its reason: special-use suffixes (unless the gateway zone itself is
    under the same one: a lab under ``.test`` runs its own CA), '_' in a label (not a host
    name), '--' in positions 3-4 outside valid IDNA, and a name too long to carry
    ``_acme-challenge.`` in front (the DNS-01 record could not exist).
    """
    fqdn = check_domain(name)
    suffix = special_use_suffix(fqdn)
    if suffix is not None and special_use_suffix(zone) != suffix:
        raise ValueError(
            f"{fqdn}: .{suffix} is a special-use name (RFC 6761 and successors); no public CA"
            " issues certificates for it"
        )
    for lab in fqdn.split("."):
        if "_" in lab:
            raise ValueError(
                f"{fqdn}: label {lab!r} contains '_'; a host name that gets a certificate"
                " uses only a-z, 0-9 and '-'"
            )
        _check_idna(lab, fqdn)
    if len(CHALLENGE_PREFIX) + len(fqdn) > 253:
        raise ValueError(
            f"{fqdn[:40]}...: too long for its DNS-01 record (with '{CHALLENGE_PREFIX}' in"
            f" front a domain may have at most {253 - len(CHALLENGE_PREFIX)} characters)"
        )
    return fqdn


def new_challenge_label() -> str:
    """A fresh label under ``_acme.ZONE`` for one claim's ``_acme-challenge`` CNAME.

    Random per claim (128 bits), never derived from the domain: two owners claiming the
    same domain get different targets, so the CNAME in the domain's DNS says which claim
    its owner made. Labels of domains claimed before claims existed ('d' + 24 hex,
    derived from the name) are kept so their CNAMEs keep working.
    """
    return "c" + secrets.token_hex(16)
