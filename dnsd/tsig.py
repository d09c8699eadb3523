"""TSIG (RFC 8945) for zone transfers and NOTIFY, sans-IO, on top of dnspython.

dnspython does the MAC and the digest layout (``dns.tsig.sign``/``validate``); this module
only decides what to verify and how to answer a failure: NOTAUTH with the TSIG error
BADKEY or BADSIG in an unsigned TSIG record, BADTIME in a signed one carrying our clock
(section 5.2). The time window is the request's fudge but never more than ``FUDGE``, so a
client cannot widen it. Callers pass only bytes that ``wire.scan_message`` accepted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
from dns.rdtypes.ANY.TSIG import TSIG

from webgateway.config import TsigConfig

FUDGE = 300
NOTAUTH = 9
BADSIG = 16
BADKEY = 17
BADTIME = 18
_TSIG_RR = struct.Struct(">HHIH")


@dataclass
class Verdict:
    """A request's TSIG check. ``error`` 0 with ``rdata`` None: the request was unsigned."""

    message: dns.message.Message | None  # None when the bytes did not parse
    error: int = 0
    owner: dns.name.Name | None = None
    rdata: TSIG | None = None

    @property
    def signed(self) -> bool:
        return self.rdata is not None and self.error == 0


class Signer:
    """One key: verifies requests, signs replies (one message or a multi-message stream)."""

    def __init__(self, config: TsigConfig) -> None:
        self.key = dns.tsig.Key(config.name + ".", config.secret, config.algorithm + ".")
        self.keyring = {self.key.name: self.key}

    def verify(self, data: bytes, now: int) -> Verdict:
        """Check the TSIG of a request (if any) in the order of RFC 8945 section 5.2."""
        try:
            msg = dns.message.from_wire(data, keyring=self.keyring)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadAlgorithm, dns.tsig.BadKey):
            return self._failed(data, BADKEY)
        except dns.tsig.BadSignature:
            return self._failed(data, BADSIG)
        except dns.tsig.BadTime:
            return self._failed(data, BADTIME)
        except Exception:  # hostile bytes: dnspython raises more than DNSException
            return Verdict(None, dns.rcode.FORMERR)
        if msg.tsig is None:
            return Verdict(msg)
        rd = msg.tsig[0]
        if abs(rd.time_signed - now) > min(rd.fudge, FUDGE):
            return Verdict(msg, BADTIME, msg.tsig.name, rd)
        return Verdict(msg, 0, msg.tsig.name, rd)

    @staticmethod
    def _failed(data: bytes, error: int) -> Verdict:
        try:
            msg = dns.message.from_wire(data, keyring=False)
        except Exception:
            return Verdict(None, dns.rcode.FORMERR)
        if msg.tsig is None:
            return Verdict(None, dns.rcode.FORMERR)
        return Verdict(msg, error, msg.tsig.name, msg.tsig[0])

    def sign(self, wire: bytes, request: TSIG | None, now: int,
             ctx: dns.tsig.HMACTSig | None = None, *, multi: bool = False, error: int = 0,
             other: bytes = b"") -> tuple[bytes, dns.tsig.HMACTSig | None]:
        """``wire`` with our TSIG appended; ``ctx`` chains the messages of one transfer
        (RFC 8945 section 5.3.1). ``request``: the signed request this answers."""
        template = _rdata(self.key.algorithm, now, wire[0] << 8 | wire[1], error, other)
        request_mac = request.mac if request is not None and ctx is None else None
        rd, next_ctx = _sign(wire, self.key, template, now, request_mac, ctx, multi)
        return _append(wire, self.key.name, rd), next_ctx

    def error_reply(self, wire: bytes, verdict: Verdict, now: int) -> bytes:
        """NOTAUTH with the TSIG error: BADTIME signed (our clock in Other Data), BADKEY
        and BADSIG unsigned with an empty MAC, in the request's key name and algorithm."""
        assert verdict.rdata is not None and verdict.owner is not None
        if verdict.error == BADTIME:
            other = struct.pack(">HI", now >> 32 & 0xFFFF, now & 0xFFFFFFFF)
            template = _rdata(self.key.algorithm, verdict.rdata.time_signed,
                              verdict.rdata.original_id, BADTIME, other)
            rd, _ = _sign(wire, self.key, template, verdict.rdata.time_signed,
                          verdict.rdata.mac, None, False)
            return _append(wire, self.key.name, rd)
        rd = _rdata(verdict.rdata.algorithm, now, verdict.rdata.original_id, verdict.error, b"")
        return _append(wire, verdict.owner, rd)

    def check_reply(self, data: bytes, request_mac: bytes) -> dns.message.Message:
        """Parse and verify a reply to a request we signed (NOTIFY's acknowledgement);
        raises ``dns.exception.DNSException`` (or worse, on hostile bytes) when it fails."""
        return dns.message.from_wire(data, keyring=self.keyring, request_mac=request_mac)


def _rdata(algorithm: dns.name.Name, time_signed: int, original_id: int, error: int,
           other: bytes) -> TSIG:
    """A TSIG record with an empty MAC (dnspython's TSIG class is not typed)."""
    rd: TSIG = TSIG(dns.rdataclass.ANY, dns.rdatatype.TSIG,  # type: ignore[no-untyped-call]
                    algorithm, time_signed, FUDGE, b"", original_id, error, other)
    return rd


def _sign(wire: bytes, key: dns.tsig.Key, template: TSIG, now: int, request_mac: bytes | None,
          ctx: dns.tsig.HMACTSig | None, multi: bool) -> tuple[TSIG, dns.tsig.HMACTSig | None]:
    """``dns.tsig.sign`` with types: the record with its MAC, and the chained context."""
    rd, next_ctx = dns.tsig.sign(wire, key, template, now,  # type: ignore[no-untyped-call]
                                 request_mac, ctx, multi)
    return rd, next_ctx


def _append(wire: bytes, owner: dns.name.Name, rd: TSIG) -> bytes:
    rdata = rd.to_wire()
    assert rdata is not None
    arcount = (wire[10] << 8 | wire[11]) + 1
    return b"".join((wire[:10], arcount.to_bytes(2, "big"), wire[12:], owner.to_wire() or b"",
                     _TSIG_RR.pack(dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)),
                     rdata))
