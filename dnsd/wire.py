"""DNS wire format, sans-IO: the bounded hand parser of queries and the record packers.

The hot path never calls a general DNS parser: ``parse_fast`` reads the header, one
uncompressed question and at most one OPT record with a single bounded loop, and
answers ``None`` for anything else so the caller can take the guarded slow path.
``scan_message`` is that guard: it walks a whole message in bounded time (strictly
backward compression pointers, a cap on hops and records) before dnslib may see it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# types
A = 1
NS = 2
CNAME = 5
SOA = 6
TXT = 16
AAAA = 28
OPT = 41
TSIG = 250
IXFR = 251
AXFR = 252
ANY = 255
CAA = 257
# classes
IN = 1
# rcodes (BADVERS is extended: 16 = ext-rcode 1 in OPT, header rcode 0)
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

#: EDNS key of a query: no OPT, OPT without DO, OPT with DO (part of the cache key).
NO_EDNS = 0
EDNS = 1
EDNS_DO = 2

#: The UDP payload we advertise and never exceed (the DNS flag day 2020 value).
OUR_UDP_SIZE = 1232
MAX_NAME = 255
MAX_POINTER_HOPS = 127
MAX_RECORDS = 64
MAX_MESSAGE = 65535

_HDR = struct.Struct(">HBBHHHH")
_RR = struct.Struct(">HHIH")


class WireError(ValueError):
    """The bytes are not a well-formed DNS message (the answer is FORMERR)."""


class Query(NamedTuple):
    """One question and its EDNS, as both parsers hand it to the reply builder."""

    qname: bytes  # lower-cased wire form, with the root byte
    qtype: int
    qclass: int
    question: bytes  # as it is echoed: uncompressed, in the client's letter case
    ekey: int  # NO_EDNS, EDNS or EDNS_DO
    udp_size: int  # the client's advertised size (512 without EDNS)
    edns_version: int  # 0 without EDNS


def parse_fast(data: bytes) -> Query | None:
    """The common query shape, or ``None`` (then use the slow, guarded path).

    Common shape: QR=0, opcode QUERY, QDCOUNT=1, no answer/authority records, an
    uncompressed question, and nothing or exactly one well-formed root OPT after it.
    """
    n = len(data)
    if n < 17 or n > 4096 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    ar = data[11]
    if data[10] or ar > 1:
        return None
    pos = 12
    limit = min(n, 12 + MAX_NAME)
    while True:
        if pos >= limit:
            return None
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return None
        pos += length + 1
    pos += 1
    qend = pos + 4
    if qend > n:
        return None
    qtype = data[pos] << 8 | data[pos + 1]
    qclass = data[pos + 2] << 8 | data[pos + 3]
    qname = data[12:pos].lower()
    if ar == 0:
        if qend != n:
            return None
        return Query(qname, qtype, qclass, data[12:qend], NO_EDNS, 512, 0)
    if n - qend < 11 or data[qend] != 0 or data[qend + 1] != 0 or data[qend + 2] != OPT:
        return None
    size = data[qend + 3] << 8 | data[qend + 4]
    version = data[qend + 6]
    rdlen = data[qend + 9] << 8 | data[qend + 10]
    opt = qend + 11
    if opt + rdlen != n:
        return None
    while opt < n:  # every option must fit exactly
        if opt + 4 > n:
            return None
        opt += 4 + (data[opt + 2] << 8 | data[opt + 3])
    if opt != n:
        return None
    ekey = EDNS_DO if data[qend + 7] & 0x80 else EDNS
    return Query(qname, qtype, qclass, data[12:qend], ekey, size, version)


# ------------------------------------------------------------------ the guard


def _skip_name(data: bytes, pos: int, start: int) -> tuple[int, bytes]:
    """Read a possibly compressed name at ``pos``; return (offset after it, lower wire form).

    Pointers must point strictly before the name being read and at or after ``start``
    (the first byte after the header), and a name may take at most MAX_POINTER_HOPS
    jumps, so a name costs O(255) however the pointers are chained.
    """
    n = len(data)
    out = bytearray()
    end = -1
    hops = 0
    floor = pos  # a pointer must go below every place we have read from
    while True:
        if pos >= n:
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            out.append(0)
            if end < 0:
                end = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise WireError("truncated compression pointer")
            target = (length & 0x3F) << 8 | data[pos + 1]
            if target < start or target >= floor:
                raise WireError("compression pointer does not point backward")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise WireError("too many compression pointers")
            if end < 0:
                end = pos + 2
            pos = target
            floor = target
            continue
        if kind:
            raise WireError("unknown label type")
        if pos + 1 + length > n:
            raise WireError("label runs past the end")
        out += data[pos : pos + 1 + length]
        if len(out) + 1 > MAX_NAME:
            raise WireError("name longer than 255 octets")
        pos += 1 + length
    return end, bytes(out).lower()


class Scan(NamedTuple):
    """A whole message checked: its question in the fast parser's shape, and the OPT census.

    ``query`` is empty (``qname`` and ``question`` ``b""``) when QDCOUNT is 0, and carries
    EDNS only when there is exactly one well-placed OPT: otherwise the message is FORMERR
    and the error reply must not pretend to speak EDNS.
    """

    query: Query
    opt_count: int
    opt_ok: bool  # the OPT (if any) is owned by the root and sits in the additional section
    tsig_at: int = -1  # offset of the TSIG record (always the last one), -1 without


def scan_message(data: bytes) -> Scan:
    """Validate a whole message in bounded time; raise WireError when it is malformed."""
    n = len(data)
    if n < 12:
        raise WireError("shorter than a header")
    if n > MAX_MESSAGE:
        raise WireError("longer than 65535 octets")
    qd, an, ns, ar = struct.unpack_from(">HHHH", data, 4)
    if qd > 1:
        raise WireError("more than one question")
    if an + ns + ar > MAX_RECORDS:
        raise WireError("too many records")
    pos = 12
    qname = b""
    question = b""
    qtype = qclass = 0
    if qd:
        start = pos
        pos, qname = _skip_name(data, pos, 12)
        if pos + 4 > n:
            raise WireError("truncated question")
        raw = data[start:pos]
        if raw.endswith(b"\x00") and len(raw) == len(qname):
            question = data[start : pos + 4]
        else:  # compressed question: echo it expanded, in the client's case
            question = _expand(data, start) + data[pos : pos + 4]
        qtype, qclass = struct.unpack_from(">HH", data, pos)
        pos += 4
    opt_count = 0
    opt_ok = True
    udp_size, version, ekey = 512, 0, NO_EDNS
    tsig_at = -1
    for i in range(an + ns + ar):
        owner_at = pos
        pos, _owner = _skip_name(data, pos, 12)
        if pos + 10 > n:
            raise WireError("truncated record")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > n:
            raise WireError("record data runs past the end")
        if rtype == OPT:
            opt_count += 1
            if i < an + ns or data[owner_at] != 0:
                opt_ok = False
            udp_size = rclass
            version = (ttl >> 16) & 0xFF
            ekey = EDNS_DO if ttl & 0x8000 else EDNS
        elif rtype == TSIG:
            if i != an + ns + ar - 1:
                raise WireError("TSIG is not the last record")
            tsig_at = owner_at
    if pos != n:
        raise WireError("trailing bytes after the last record")
    if opt_count != 1 or not opt_ok:
        udp_size, version, ekey = 512, 0, NO_EDNS
    return Scan(Query(qname, qtype, qclass, question, ekey, udp_size, version), opt_count, opt_ok,
                tsig_at)


def _expand(data: bytes, pos: int) -> bytes:
    """The name at ``pos`` uncompressed in its original case (already validated)."""
    out = bytearray()
    while True:
        length = data[pos]
        if length == 0:
            out.append(0)
            return bytes(out)
        if length & 0xC0 == 0xC0:
            pos = (length & 0x3F) << 8 | data[pos + 1]
            continue
        out += data[pos : pos + 1 + length]
        pos += 1 + length


# ------------------------------------------------------------------ packing


def name_to_wire(name: str) -> bytes:
    """``alice.gw.test`` (trailing dot optional) -> lower-case wire form."""
    name = name.strip().rstrip(".").lower()
    out = bytearray()
    if name:
        for label in name.split("."):
            raw = label.encode("ascii")
            if not 1 <= len(raw) <= 63:
                raise ValueError(f"bad label in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"{name!r} is longer than 255 octets")
    return bytes(out)


def wire_to_text(wire: bytes) -> str:
    """Dotted text of an uncompressed wire name (for logs and tests)."""
    labels = []
    pos = 0
    while wire[pos]:
        labels.append(wire[pos + 1 : pos + 1 + wire[pos]].decode("ascii", "backslashreplace"))
        pos += 1 + wire[pos]
    return ".".join(labels) + "."


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + _RR.pack(rtype, IN, ttl, len(rdata)) + rdata


def txt_rdata(value: str) -> bytes:
    """One TXT value as character-strings of at most 255 octets each."""
    raw = value.encode("utf-8")
    if len(raw) < 256:  # the usual one string (a zone's 100k TXT load 0.3 s faster)
        return bytes((len(raw),)) + raw
    chunks = (raw[i : i + 255] for i in range(0, len(raw), 255))
    return b"".join(bytes([len(c)]) + c for c in chunks)


def caa_rdata(tag: str, value: str, flags: int = 0) -> bytes:
    t = tag.encode("ascii")
    return bytes([flags, len(t)]) + t + value.encode("ascii")


def soa_rdata(
    mname: bytes, rname: bytes, serial: int, refresh: int, retry: int, expire: int, minimum: int
) -> bytes:
    tail = struct.pack(">IIIII", serial & 0xFFFFFFFF, refresh, retry, expire, minimum)
    return mname + rname + tail


def opt_rr(ekey: int, ext_rcode: int = 0) -> bytes:
    """Our OPT: root owner, our UDP size, version 0, DO echoed, no options."""
    flags = 0x8000 if ekey == EDNS_DO else 0
    return b"\x00" + struct.pack(">HHBBHH", OPT, OUR_UDP_SIZE, ext_rcode, 0, flags, 0)


def header(
    flags: int, rcode: int, qd: int, an: int, ns: int, ar: int, msg_id: int = 0
) -> bytes:
    """A response header; ``flags`` carries QR/AA/TC/opcode in the high byte's bits."""
    return _HDR.pack(msg_id, flags, rcode & 0x0F, qd, an, ns, ar)


#: First flag byte of our answers: QR and AA (RD is copied from the query on the way out).
QR_AA = 0x84
QR = 0x80
TC = 0x02
