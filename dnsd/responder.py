"""Query bytes in, response bytes out: the sans-IO core both the UDP and TCP shells call.

The fast path handles the common shape with ``wire.parse_fast`` and a dict lookup in the
zone view. Everything else goes through ``wire.scan_message`` (bounded time whatever the
bytes) and only then through dnslib, which checks record contents; any exception there
means FORMERR, never a crash. Responses to responses and runt packets are dropped so two
servers can never be made to ping-pong. Both parsers yield the same ``wire.Query``, and
one builder (``_reply``) turns it into the reply: the refusals that depend on the
question, the packed answer, truncation -- so what every answer gains (DNSSEC records,
say) is added in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dnslib

from dnsd import wire
from dnsd.zone import ZoneView

log = logging.getLogger(__name__)

_META_NOTIMP = frozenset({wire.OPT, 253, 254})  # OPT, MAILB, MAILA as question types
_TRANSFERS = frozenset({wire.AXFR, wire.IXFR})

#: The query types counted by name in ``webgateway_dns_queries_total``; any other type is
#: "other" and a query whose question could not be read is "none", so the label stays
#: bounded whatever clients send.
QTYPE_NAMES: tuple[str, ...] = (
    "A", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "AAAA", "SRV", "NAPTR", "OPT", "DS",
    "RRSIG", "NSEC", "DNSKEY", "TLSA", "SVCB", "HTTPS", "IXFR", "AXFR", "ANY", "CAA",
    "other", "none",
)
_OTHER = QTYPE_NAMES.index("other")
NO_QUESTION = QTYPE_NAMES.index("none")
_SLOT = [_OTHER] * 65536
for _i, _name in enumerate(QTYPE_NAMES[:_OTHER]):
    _SLOT[getattr(dnslib.QTYPE, _name)] = _i
#: Counters per (truncated, qtype slot, rcode): index ``truncated * TRUNCATED + slot * RCODES
#: + rcode`` (BADVERS is 16). The index is cached with the reply, so a cache hit counts with
#: one increment, truncated or not.
RCODES = 24
TRUNCATED = len(QTYPE_NAMES) * RCODES

#: A cached reply: the filling query's bytes after its name (a hit ends with them), the
#: reply's header after the ID, where the question ends, the reply's body after the
#: question, and its counter index (see ``TRUNCATED``).
_Cached = tuple[bytes, bytes, int, bytes, int]


class Responder:
    """Answers one message at a time; counts what it did for the metrics collector."""

    def __init__(self, view: ZoneView, cache_size: int = 50_000) -> None:
        self.view = view
        self.counts = [0] * (2 * TRUNCATED)  # see ``TRUNCATED``
        self.dropped = 0  # responses and runts: no reply at all
        self.slow = 0
        self.hits = 0
        self._last = 0  # the counter index of the last reply built (cached with it)
        self.cache_size = cache_size
        self._cache: dict[bytes, _Cached] = {}
        self._old: dict[bytes, _Cached] = {}
        self._parts: dict[bytes, bytes] = {}
        self._gen = -1
        #: Takes TSIG-signed queries and transfers over UDP (``dnsd.transfer``), if set.
        self.special: Callable[[bytes, wire.Scan, bool], bytes | None] | None = None

    def handle(self, data: bytes, tcp: bool = False) -> bytes | None:
        """The reply to one message, or None when it deserves none.

        Over UDP the query bytes after the ID, lower-cased, key a cache of whole replies,
        so the random letter case resolvers put in every name (0x20) still hits. Only the
        name may differ in case from the query that filled the entry: ``bytes.lower`` maps
        exactly DNS's ASCII letters, but would also fold a qtype such as HTTPS (0x0041) or
        an OPT length, so a hit must end with that query's bytes after its name. (Its
        header cannot differ: only fast-path queries fill the cache, whose flag byte 2 is
        below 8 and whose counts are 0 or 1, and folding byte 3 adds only AD, which the
        reply ignores.) The reply is the cached header and body around this query's own
        question, so its case is echoed.

        Two generations of ``cache_size`` entries each: a full young one becomes the old
        one, and an old entry asked again moves back to the young; so what is asked at
        least once per ``cache_size`` new questions stays (where clearing a full cache
        would drop a working set just larger than it all at once), in bounded memory.
        Entries share their header, body and tail bytes. Both die with every change of
        the view.
        """
        if tcp:
            return self._answer(data, True)
        if self._gen != self.view.gen:
            self._rotate()
            self._rotate()
            self._gen = self.view.gen
        key = data[2:].lower()
        hit = self._cache.get(key)
        if hit is None:
            hit = self._old.get(key)
            if hit is not None:
                self._keep(key, hit)
        if hit is not None and data.endswith(hit[0]):
            self.hits += 1
            self.counts[hit[4]] += 1
            return data[:2] + hit[1] + data[12 : hit[2]] + hit[3]
        q = wire.parse_fast(data)
        if q is None:
            return self._slow(data, False)
        resp = self._reply(data, q, False)
        if len(data) <= 300:
            qend = 12 + len(q.question)
            part = self._parts.setdefault
            tail, head, body = data[qend - 4 :], resp[2:12], resp[qend:]
            self._keep(key, (part(tail, tail), part(head, head), qend, part(body, body),
                             self._last))
        return resp

    def _keep(self, key: bytes, entry: _Cached) -> None:
        if len(self._cache) >= self.cache_size:
            self._rotate()
        self._cache[key] = entry

    def _rotate(self) -> None:
        self._old = self._cache
        self._cache = {}
        self._parts = {}

    def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        q = wire.parse_fast(data)
        if q is None:
            return self._slow(data, tcp)
        return self._reply(data, q, tcp)

    def _slow(self, data: bytes, tcp: bool) -> bytes | None:
        guarded = self._guard(data, tcp)
        if not isinstance(guarded, wire.Query):
            return guarded
        return self._reply(data, guarded, tcp)

    def _guard(self, data: bytes, tcp: bool) -> wire.Query | bytes | None:
        """The slow parse: the query in the fast parser's shape, or the error reply it
        earns (FORMERR, NOTIMP for another opcode), or None for a response or a runt."""
        self.slow += 1
        if len(data) < 12 or data[2] & 0x80:
            self.dropped += 1
            return None
        try:
            scan = wire.scan_message(data)
        except wire.WireError:
            return self._error(data, wire.FORMERR, b"", wire.NO_EDNS)
        q = scan.query
        try:
            dnslib.DNSRecord.parse(data)
        except Exception:  # dnslib raises more than DNSError on hostile bytes
            return self._error(data, wire.FORMERR, q.question, wire.NO_EDNS)
        if self.special is not None and (scan.tsig_at >= 0 or q.qtype in _TRANSFERS):
            return self.special(data, scan, tcp)
        if (data[2] >> 3) & 0x0F:  # an opcode other than QUERY
            return self._error(data, wire.NOTIMP, q.question, q.ekey)
        if not q.question or scan.opt_count > 1 or not scan.opt_ok:
            return self._error(data, wire.FORMERR, q.question, q.ekey)
        return q

    def _reply(self, data: bytes, q: wire.Query, tcp: bool) -> bytes:
        """The one reply builder for both parsers: the query-level refusals, then the view's
        packed answer behind the query's ID, flags and own question bytes, then truncation
        to what the client can take over UDP."""
        if q.edns_version:
            return self._error(data, wire.BADVERS, q.question, q.ekey)
        qtype = q.qtype
        if q.qclass != wire.IN or qtype in _TRANSFERS:
            return self._error(data, wire.REFUSED, q.question, q.ekey)
        if qtype in _META_NOTIMP:
            return self._error(data, wire.NOTIMP, q.question, q.ekey)
        hdr, body = self.view.answer(q.qname, qtype, q.ekey)
        resp = b"".join(
            (
                data[:2],
                bytes((hdr[2] | (data[2] & 0x01), hdr[3] | (data[3] & 0x10))),
                hdr[4:],
                q.question,
                body,
            )
        )
        if not tcp:
            limit = max(512, min(q.udp_size, wire.OUR_UDP_SIZE)) if q.ekey else 512
            if len(resp) > limit:
                self._count(qtype, hdr[3], TRUNCATED)
                return _truncate(resp, q.question, q.ekey)
        self._count(qtype, hdr[3])
        return resp

    def _count(self, qtype: int, rcode: int, truncated: int = 0) -> None:
        self._last = i = truncated + _SLOT[qtype] * RCODES + rcode
        self.counts[i] += 1

    def truncated(self) -> int:
        """UDP replies sent with TC=1."""
        return sum(self.counts[TRUNCATED:])

    def _error(self, data: bytes, rcode: int, question: bytes, ekey: int) -> bytes:
        """An error reply: ID, opcode and RD echoed, the question when we could read it."""
        if question:
            self._count(question[-4] << 8 | question[-3], rcode)
        else:
            self._last = NO_QUESTION * RCODES + rcode
            self.counts[self._last] += 1
        byte2 = wire.QR | (data[2] & 0x79)  # opcode and RD
        ar = [wire.opt_rr(ekey, rcode >> 4)] if ekey else []
        hdr = wire.header(byte2, rcode, 1 if question else 0, 0, 0, len(ar),
                          msg_id=data[0] << 8 | data[1])
        return hdr[:3] + bytes((hdr[3] | (data[3] & 0x10),)) + hdr[4:] + question + b"".join(ar)


def _truncate(resp: bytes, question: bytes, ekey: int) -> bytes:
    """TC=1 with the question (and OPT) kept: the client retries over TCP."""
    return _tc(resp[:2], resp[2], resp[3], question, ekey)


def _tc(msg_id: bytes, byte2: int, byte3: int, question: bytes, ekey: int) -> bytes:
    opt = wire.opt_rr(ekey) if ekey else b""
    hdr = msg_id + bytes((byte2 | wire.TC, byte3)) + b"\x00\x01\x00\x00\x00\x00"
    return hdr + (b"\x00\x01" if opt else b"\x00\x00") + question + opt


def slip(data: bytes) -> bytes | None:
    """A rate-limited query's reply: TC=1 and the question, nothing else, so a resolver
    retries over TCP; None for anything but a plain query (those get nothing)."""
    q = wire.parse_fast(data)
    if q is None:
        return None
    return _tc(data[:2], wire.QR | (data[2] & 0x01), data[3] & 0x10, q.question, q.ekey)
