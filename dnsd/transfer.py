"""Zone transfers (AXFR, RFC 5936; IXFR, RFC 1995) and TSIG-signed queries, sans-IO.

Bytes and the client's address in, reply messages out: a transfer is a lazy iterator of
messages of at most ``MESSAGE_SIZE`` octets streamed from the zone view (never the whole
zone in memory), each signed with TSIG, the first with the request's MAC and the others
chained (RFC 8945 section 5.3.1). Owners are compressed to a pointer at the question's
zone name, so a name costs its own label and 12 octets of record header.

No open AXFR: a transfer needs a configured key, a request signed with it, and a client
address in the ACL; anything less is REFUSED (or NOTAUTH with the TSIG error). Any other
signed query is answered as usual by the responder and the reply signed.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import dns.rdatatype
import dns.tsig

from dnsd import wire
from dnsd.journal import Journal, Record
from dnsd.signer import Owner, canonical_key, signed_zone
from dnsd.tsig import NOTAUTH, Signer, Verdict
from dnsd.zone import ZoneContents
from webgateway.addresses import IPAddress
from webgateway.config import IPNetwork

log = logging.getLogger(__name__)

#: Transfer messages stay under 64 KiB with room for the TSIG record.
MESSAGE_SIZE = 64_000
_RR = struct.Struct(">HHIH")
_TRANSFERS = frozenset({wire.AXFR, wire.IXFR})
_APEX = b"\xc0\x0c"  # the question's name: every message repeats the question


@dataclass
class Stats:
    axfr: int = 0
    ixfr: int = 0
    ixfr_fallback: int = 0
    refused: int = 0
    tsig_errors: int = 0


def is_transfer(data: bytes) -> bool:
    """Whether a TCP message asks for AXFR or IXFR (cheap: the question only)."""
    q = wire.parse_fast(data)
    if q is not None:
        return q.qtype in _TRANSFERS
    try:
        return wire.scan_message(data).query.qtype in _TRANSFERS
    except wire.WireError:
        return False


class Transfers:
    """Answers transfer requests and signed queries for one zone view and its journal."""

    def __init__(self, journal: Journal, signer: Signer | None, acl: Iterable[IPNetwork],
                 answer: Callable[[bytes, bool], bytes | None]) -> None:
        """``answer``: the responder's ``handle``, for the unsigned reply to a signed query."""
        self.journal = journal
        self.view = journal.view
        self.signer = signer
        self.acl = tuple(acl)
        self.answer = answer
        self.stats = Stats()

    def allowed(self, peer: IPAddress) -> bool:
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in net for net in self.acl)

    # ------------------------------------------------------------------ entry points
    def respond(self, data: bytes, peer: IPAddress | None, now: int,
                tcp: bool = True) -> Iterator[bytes]:
        """The reply messages to one request (transfers stream; the rest is one message).

        ``peer`` None (UDP, from the responder's hook): nothing beyond the SOA is sent.
        """
        try:
            scan = wire.scan_message(data)
        except wire.WireError:
            return iter([_error(data, b"", wire.FORMERR)])
        if data[2] & 0x80:
            return iter(())
        return self._respond(data, scan, peer, now, tcp)

    def signed_or_udp(self, data: bytes, scan: wire.Scan, tcp: bool, now: int) -> bytes | None:
        """The responder's hook for a signed query or a transfer over UDP: one message."""
        return next(self._respond(data, scan, None, now, tcp), None)

    def _respond(self, data: bytes, scan: wire.Scan, peer: IPAddress | None, now: int,
                 tcp: bool) -> Iterator[bytes]:
        q = scan.query
        verdict = Verdict(None)
        if scan.tsig_at >= 0:
            if self.signer is None:  # we know no key: the key is unknown (RFC 8945 5.2.1)
                self.stats.tsig_errors += 1
                return iter([_error(data, q.question, NOTAUTH)])
            verdict = self.signer.verify(data, now)
            if verdict.message is None:
                return iter([_error(data, q.question, wire.FORMERR)])
            if verdict.error:
                self.stats.tsig_errors += 1
                reply = _error(data[:scan.tsig_at], q.question, NOTAUTH, arcount=0)
                log.info("TSIG %s from %s for %s", _TSIG_ERRORS.get(verdict.error),
                         peer or "udp", wire.wire_to_text(q.qname or b"\x00"))
                return iter([self.signer.error_reply(reply, verdict, now)])
        sign = self._sign_with(verdict, now)
        if q.qtype not in _TRANSFERS:
            if not verdict.signed:
                return iter([_error(data, q.question, wire.REFUSED)])  # no TSIG: not ours
            unsigned = _strip(data, scan.tsig_at)
            answered = self.answer(unsigned, tcp)
            return iter([] if answered is None else [next(sign([answered]))])
        zone = q.qname
        refused = (not verdict.signed or q.qclass != wire.IN
                   or (peer is not None and not self.allowed(peer)))
        if refused:
            self.stats.refused += 1
            log.info("transfer of %s refused to %s (%s)", wire.wire_to_text(zone or b"\x00"),
                     peer or "udp", "unsigned" if not verdict.signed else "not in the ACL")
            return sign([_error(data, q.question, wire.REFUSED, arcount=0)])
        if zone not in self.view.zones:
            return sign([_error(data, q.question, NOTAUTH, arcount=0)])
        if peer is None or not tcp:  # over UDP: the SOA only (RFC 1995 section 2)
            if q.qtype == wire.AXFR:
                self.stats.refused += 1
                return sign([_error(data, q.question, wire.REFUSED, arcount=0)])
            soa = wire.rr(_APEX, wire.SOA, self.view.ttl, self.view.soa_rdata())
            return sign(_pack(data, q.question, [soa]))
        if q.qtype == wire.AXFR:
            self.stats.axfr += 1
            return sign(_pack(data, q.question, self._axfr(zone)))
        assert verdict.message is not None
        return sign(_pack(data, q.question, self._ixfr(zone, verdict)))

    def _sign_with(self, verdict: Verdict, now: int) -> Callable[[Iterable[bytes]],
                                                                 Iterator[bytes]]:
        signer = self.signer

        def sign(messages: Iterable[bytes]) -> Iterator[bytes]:
            if signer is None or not verdict.signed:
                yield from messages
                return
            ctx: dns.tsig.HMACTSig | None = None
            for m in messages:
                signed, ctx = signer.sign(m, verdict.rdata, now, ctx, multi=True)
                yield signed

        return sign

    # ------------------------------------------------------------------ records
    def _axfr(self, zone: bytes) -> Iterator[bytes]:
        """SOA, every record of the zone, SOA (RFC 5936 section 2.2)."""
        soa = wire.rr(_APEX, wire.SOA, self.view.ttl, self.view.soa_rdata())
        return self._whole(soa, self.view.snapshot(zone), zone)

    def _whole(self, soa: bytes, snap: ZoneContents, zone: bytes) -> Iterator[bytes]:
        ttl = self.view.ttl
        cut = len(zone)
        yield soa
        if self.view.signer is not None:
            soa_rdata = soa[len(_APEX) + _RR.size:]
            for owner, tail in signed_zone(self.view.signer, zone, soa_rdata, ttl,
                                           self.view.neg_ttl, _owners(snap, zone)):
                yield owner[:-cut] + _APEX + tail
            yield soa
            return
        for owner, rtype, rdata in snap.records:
            yield owner[:-cut] + _APEX + _RR.pack(rtype, wire.IN, ttl, len(rdata)) + rdata
        tails = [_RR.pack(t, wire.IN, ttl, len(rd)) + rd for t, rd in snap.gateway]
        skip = snap.with_node
        for raw in snap.labels:  # the bulk of a big zone: one concatenation a record
            if raw not in skip:
                owner = b"%c%s\xc0\x0c" % (len(raw), raw)
                for tail in tails:
                    yield owner + tail
        yield soa

    def _ixfr(self, zone: bytes, verdict: Verdict) -> Iterator[bytes]:
        """The diff since the client's serial, or the whole zone when the journal does
        not reach back that far (RFC 1995 section 4), or the SOA when it is current.
        A signed zone is always sent whole: the journal holds no RRSIG or NSEC changes."""
        assert verdict.message is not None
        client = _client_serial(verdict)
        soa_now = self.view.soa_rdata()
        serial = self.view.serial & 0xFFFFFFFF
        if client == serial:
            self.stats.ixfr += 1
            return iter([wire.rr(_APEX, wire.SOA, self.view.ttl, soa_now)])
        diff = self.journal.since(client, zone) if client is not None else None
        if self.view.signer is not None:
            diff = None
        if diff is None:
            self.stats.ixfr_fallback += 1
            return self._axfr(zone)
        self.stats.ixfr += 1
        return self._diff_records(zone, soa_now, client or 0, diff.removed, diff.added)

    def _diff_records(self, zone: bytes, soa_now: bytes, old: int,
                      removed: Iterable[Record], added: Iterable[Record]) -> Iterator[bytes]:
        ttl = self.view.ttl
        cut = len(zone)
        soa_old = soa_now[:-20] + struct.pack(">I", old) + soa_now[-16:]
        new = wire.rr(_APEX, wire.SOA, ttl, soa_now)
        yield new
        yield wire.rr(_APEX, wire.SOA, ttl, soa_old)
        for _, owner, rtype, rdata in removed:
            yield owner[:-cut] + _APEX + _RR.pack(rtype, wire.IN, ttl, len(rdata)) + rdata
        yield new
        for _, owner, rtype, rdata in added:
            yield owner[:-cut] + _APEX + _RR.pack(rtype, wire.IN, ttl, len(rdata)) + rdata
        yield new


_TSIG_ERRORS = {16: "BADSIG", 17: "BADKEY", 18: "BADTIME"}


def _owners(snap: ZoneContents, zone: bytes) -> Iterator[Owner]:
    """Every owner of the zone with its RRsets, in canonical order (the NSEC chain's):
    the few nodes sorted, merged with the user labels, which are sorted already (one label
    under the apex orders as its bytes) and streamed without a tuple each held."""
    nodes: dict[bytes, dict[int, list[bytes]]] = {}
    for owner, rtype, rdata in snap.records:
        nodes.setdefault(owner, {}).setdefault(rtype, []).append(rdata)
    keyed = sorted((canonical_key(o), o, {t: tuple(rds) for t, rds in sets.items()})
                   for o, sets in nodes.items())
    gateway: dict[int, tuple[bytes, ...]] = {}
    for t, rd in snap.gateway:
        gateway[t] = (*gateway.get(t, ()), rd)
    apex = canonical_key(zone)

    def labels() -> Iterator[tuple[tuple[bytes, ...], bytes, dict[int, tuple[bytes, ...]]]]:
        for raw in snap.labels:
            if raw not in snap.with_node:
                yield (*apex, raw), b"%c%s" % (len(raw), raw) + zone, gateway

    for _, owner, sets in heapq.merge(keyed, labels(), key=lambda x: x[0]):
        yield owner, sets


def _client_serial(verdict: Verdict) -> int | None:
    msg = verdict.message
    if msg is None:
        return None
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(rrset[0].serial)
    return None


def _pack(query: bytes, question: bytes, records: Iterable[bytes]) -> Iterator[bytes]:
    """Records into messages of at most MESSAGE_SIZE octets, each with the question."""
    head = len(question) + 12
    batch: list[bytes] = []
    size = head
    for r in records:
        if batch and size + len(r) > MESSAGE_SIZE:
            yield _message(query, question, batch)
            batch = []
            size = head
        batch.append(r)
        size += len(r)
    yield _message(query, question, batch)


def _message(query: bytes, question: bytes, answers: list[bytes]) -> bytes:
    hdr = wire.header(wire.QR_AA, wire.NOERROR, 1, len(answers), 0, 0,
                      msg_id=query[0] << 8 | query[1])
    return hdr + question + b"".join(answers)


def _error(query: bytes, question: bytes, rcode: int, arcount: int = 0) -> bytes:
    """An error reply echoing ID, opcode and the question (no records)."""
    byte2 = wire.QR | (query[2] & 0x79) if len(query) > 2 else wire.QR
    msg_id = query[0] << 8 | query[1] if len(query) > 1 else 0
    return wire.header(byte2, rcode, 1 if question else 0, 0, 0, arcount, msg_id=msg_id) + question


def _strip(data: bytes, tsig_at: int) -> bytes:
    """The request without its TSIG record (the last one), ARCOUNT adjusted."""
    arcount = (data[10] << 8 | data[11]) - 1
    return data[:10] + arcount.to_bytes(2, "big") + data[12:tsig_at]
