"""Online DNSSEC signing, sans-IO: RRSIGs made as answers are built, and compact denial.

The zone changes every second (ACME TXT records come and go), so nothing is signed ahead:
each RRset is signed the first time an answer needs it and its RRSIG is cached, keyed on
the RRset itself (owner, type, TTL, RDATA, zone), so a changed RRset simply misses and an
unchanged one costs a dict lookup. A signature is valid ``validity`` seconds from an
inception backdated an hour (clock skew), and is replaced once less than ``refresh``
seconds of it remain. During a key rollover every key in the zone signs every RRset
(double signature, RFC 7583 3.3), so a resolver holding either key's DS validates.

Denial of existence is RFC 9824 compact denial ("black lies"): the answer for a name we
do not have is NOERROR with one NSEC at the query name whose next name is its immediate
successor (``\\000.qname``) and whose bitmap holds RRSIG, NSEC and NXNAME; NODATA is the
same NSEC with the name's real types. One NSEC per negative answer, signed online and
independent of the rest of the zone (no chain to keep, no zone walking), as Cloudflare
and NS1 do; a validator sees an ordinary proven NODATA.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dnsd import wire
from webgateway.zonekeys import ALGORITHM, ZoneKey

RRSIG = 46
NSEC = 47
NXNAME = 128  # RFC 9824
INCEPTION_BACKDATE = 3600
_ECDSA = ec.ECDSA(hashes.SHA256())
_NAME_RDATA = frozenset({wire.NS, wire.CNAME})
QNAME = b"\xc0\x0c"  # an owner written as a pointer to the question


class RRset(NamedTuple):
    """One RRset of an answer; ``owner`` is ``QNAME`` for the query name itself."""

    owner: bytes
    rtype: int
    ttl: int
    rdatas: tuple[bytes, ...]
    zone: bytes  # the apex whose key signs it


class Denial(NamedTuple):
    """What a negative answer must prove: ``types`` at ``owner``, or no name (``None``)."""

    owner: bytes
    zone: bytes
    ttl: int
    types: tuple[int, ...] | None


def type_bitmap(types: Iterable[int]) -> bytes:
    """RFC 4034 4.1.2 type bit maps."""
    windows: dict[int, bytearray] = {}
    for t in sorted(set(types)):
        block = windows.setdefault(t >> 8, bytearray(32))
        block[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    out = bytearray()
    for w, block in sorted(windows.items()):
        used = max(i for i, b in enumerate(block) if b) + 1
        out += bytes((w, used)) + block[:used]
    return bytes(out)


def successor(name: bytes) -> bytes | None:
    """The name right after ``name`` in canonical order that is not below it: ``\\000.name``,
    or, when that would pass 255 octets, the first label's last octet plus one (RFC 4471
    3.1.2, skipping the upper-case letters, which sort as lower case). None for the one
    case left (that octet is already 0xFF): such an answer goes without an NSEC."""
    if len(name) + 2 <= wire.MAX_NAME:
        return b"\x01\x00" + name
    last = name[name[0]]
    if last == 0xFF:
        return None
    nxt = last + 1 if last + 1 != ord("A") else ord("Z") + 1
    return name[: name[0]] + bytes((nxt,)) + name[name[0] + 1 :]


def label_count(name: bytes) -> int:
    n = 0
    pos = 0
    while name[pos]:
        n += 1
        pos += name[pos] + 1
    return n


def _canonical(rtype: int, rdata: bytes) -> bytes:
    """RDATA in canonical form (RFC 4034 6.2): the names in it lower-cased. Our names are
    written uncompressed and length octets are below 64, so ``lower()`` on the name bytes
    is exact."""
    if rtype in _NAME_RDATA:
        return rdata.lower()
    if rtype == wire.SOA:
        return rdata[:-20].lower() + rdata[-20:]
    return rdata


_Key = tuple[bytes, int, int, tuple[bytes, ...], bytes]  # owner, type, TTL, RDATAs, zone
_Entry = tuple[tuple[bytes, ...], float]  # RRSIG tails, when to sign again


class Signer:
    """Signs RRsets with the zone's keys and packs DO=1 answers with their RRSIGs and NSEC."""

    def __init__(
        self,
        keys: list[ZoneKey],
        validity: float = 14 * 86400,
        refresh: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
        cache_size: int = 100_000,
    ) -> None:
        """``keys``: the keys in the zone; each signs every RRset."""
        self.keys = [(k.tag, k.private) for k in keys if k.private is not None]
        assert self.keys, "a signer needs a private key"
        self.validity = validity
        self.refresh = refresh
        self.clock = clock
        self.cache_size = cache_size
        self.signed = 0  # signatures made (metrics, tests)
        self._cache: dict[_Key, _Entry] = {}
        self._old: dict[_Key, _Entry] = {}

    def rrsigs(self, owner: bytes, rtype: int, ttl: int, rdatas: tuple[bytes, ...],
               zone: bytes) -> tuple[bytes, ...]:
        """The RRSIG records for one RRset, one a key, each without its owner (type
        onward), from cache while more than ``refresh`` seconds of their validity remain.

        The cache is two generations of ``cache_size`` entries each (as dnsd's reply
        cache): a full young one becomes the old one, and an old entry used again moves
        back to the young; so RRsets asked at least once per ``cache_size`` new ones keep
        their signatures, where clearing a full cache re-signed a hot set just larger than
        it all at once. Memory stays bounded at two generations."""
        key = (owner, rtype, ttl, rdatas, zone)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is None:
            hit = self._old.get(key)
            if hit is not None and now < hit[1]:
                self._keep(key, hit)
        if hit is not None and now < hit[1]:
            return hit[0]
        inception = int(now) - INCEPTION_BACKDATE
        expiration = int(now + self.validity)
        fixed = struct.pack(">HHI", rtype, wire.IN, ttl)
        signed = b"".join(
            owner + fixed + len(rd).to_bytes(2, "big") + rd
            for rd in sorted({_canonical(rtype, rd) for rd in rdatas})
        )
        tails = []
        for tag, private in self.keys:
            head = struct.pack(">HBBIIIH", rtype, ALGORITHM, label_count(owner), ttl,
                               expiration & 0xFFFFFFFF, inception & 0xFFFFFFFF, tag) + zone
            r, s = decode_dss_signature(private.sign(head + signed, _ECDSA))
            rdata = head + r.to_bytes(32, "big") + s.to_bytes(32, "big")
            tails.append(struct.pack(">HHIH", RRSIG, wire.IN, ttl, len(rdata)) + rdata)
            self.signed += 1
        entry = (tuple(tails), expiration - self.refresh)
        self._keep(key, entry)
        return entry[0]

    def _keep(self, key: _Key, entry: _Entry) -> None:
        if len(self._cache) >= self.cache_size:
            self._old = self._cache
            self._cache = {}
        self._cache[key] = entry

    def _pack(self, qname: bytes, rrset: RRset) -> tuple[bytes, int]:
        owner = rrset.owner
        rrs = [wire.rr(owner, rrset.rtype, rrset.ttl, rd) for rd in rrset.rdatas]
        real = qname if owner == QNAME else owner
        rrs += [owner + t for t in self.rrsigs(real, rrset.rtype, rrset.ttl, rrset.rdatas,
                                                rrset.zone)]
        return b"".join(rrs), len(rrs)

    def answer(
        self,
        qname: bytes,
        flags: int,
        rcode: int,
        sections: tuple[list[RRset], list[RRset], list[RRset]],
        denial: Denial | None,
    ) -> tuple[bytes, bytes]:
        """(header, body) of a DO=1 answer: every RRset with its RRSIG, the denial's NSEC
        in the authority section; a missing name is NOERROR (compact denial)."""
        an, ns, ar = sections
        if denial is not None:
            types = (RRSIG, NSEC, NXNAME) if denial.types is None else (
                *denial.types, RRSIG, NSEC)
            real = qname if denial.owner == QNAME else denial.owner
            nxt = successor(real)
            if nxt is not None:
                nsec = nxt + type_bitmap(types)
                ns = [*ns, RRset(denial.owner, NSEC, denial.ttl, (nsec,), denial.zone)]
            if rcode == wire.NXDOMAIN:
                rcode = wire.NOERROR
        body: list[bytes] = []
        counts = []
        for section in (an, ns, ar):
            n = 0
            for rrset in section:
                packed, k = self._pack(qname, rrset)
                body.append(packed)
                n += k
            counts.append(n)
        body.append(wire.opt_rr(wire.EDNS_DO))
        hdr = wire.header(flags, rcode, 1, counts[0], counts[1], counts[2] + 1)
        return hdr, b"".join(body)


#: One owner of a zone being transferred: its name (lower-case wire) and RRsets.
Owner = tuple[bytes, dict[int, tuple[bytes, ...]]]


def canonical_key(name: bytes) -> tuple[bytes, ...]:
    """RFC 4034 6.1 canonical order as a sort key: the labels right to left (our names are
    lower-case already, and bytes compare as the RFC orders labels)."""
    labels = []
    pos = 0
    while name[pos]:
        labels.append(name[pos + 1 : pos + 1 + name[pos]])
        pos += name[pos] + 1
    return tuple(reversed(labels))


def signed_zone(signer: Signer, zone: bytes, soa: bytes, ttl: int, nsec_ttl: int,
                owners: Iterable[Owner]) -> Iterator[tuple[bytes, bytes]]:
    """The records a secondary needs to serve the zone signed, as (owner, record from the
    type on): every RRset with its RRSIGs and an NSEC chain over the owners (a secondary
    cannot make compact-denial answers, so it gets the classic chain; RFC 4035 2.3), the
    apex SOA's RRSIG included but not the SOA itself (the transfer frames the zone with it).

    ``owners`` must come in canonical order, apex first. Signing is by the same signer and
    cache as the answers, so an RRset already signed for a query costs nothing here.
    """
    first: Owner | None = None
    prev: Owner | None = None
    for cur in owners:
        if prev is None:
            first = cur
        else:
            yield from _signed_owner(signer, zone, soa, ttl, nsec_ttl, prev, cur[0])
        prev = cur
    if prev is not None and first is not None:
        yield from _signed_owner(signer, zone, soa, ttl, nsec_ttl, prev, first[0])


def _signed_owner(signer: Signer, zone: bytes, soa: bytes, ttl: int, nsec_ttl: int,
                  owner: Owner, nxt: bytes) -> Iterator[tuple[bytes, bytes]]:
    name, rrsets = owner
    for rtype, rdatas in rrsets.items():
        for rd in rdatas:
            yield name, struct.pack(">HHIH", rtype, wire.IN, ttl, len(rd)) + rd
        yield from ((name, t) for t in signer.rrsigs(name, rtype, ttl, rdatas, zone))
    types = [*rrsets, RRSIG, NSEC]
    if name == zone:
        types.append(wire.SOA)
        yield from ((name, t) for t in signer.rrsigs(name, wire.SOA, ttl, (soa,), zone))
    nsec = nxt + type_bitmap(types)
    yield name, struct.pack(">HHIH", NSEC, wire.IN, nsec_ttl, len(nsec)) + nsec
    yield from ((name, t) for t in signer.rrsigs(name, NSEC, nsec_ttl, (nsec,), zone))
