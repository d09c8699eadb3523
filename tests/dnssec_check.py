"""Validating one section of a signed answer with dnspython, for the DNSSEC tests."""

from __future__ import annotations

import dns.dnssec
import dns.exception
import dns.name
import dns.rdatatype
import dns.rrset


def validate_section(section: list[dns.rrset.RRset],
                     keys: dict[dns.name.Name, dns.rrset.RRset],
                     now: float | None = None) -> list[int]:
    """The types of the section's RRsets, once each validated with ``keys`` (at ``now``);
    ValidationFailure when one does not, or has no RRSIG at all."""
    types = []
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.RRSIG:
            continue
        sig = next((s for s in section if s.rdtype == dns.rdatatype.RRSIG
                    and s.name == rrset.name and s.covers == rrset.rdtype), None)
        if sig is None:
            raise dns.exception.ValidationFailure(f"no RRSIG over {rrset.name} {rrset.rdtype}")
        dns.dnssec.validate(rrset, sig, keys, now=now)
        types.append(rrset.rdtype)
    return types
