"""Hostile DNS packets: real queries to start from, mutations of them, and compression-
pointer chains. The unit corpus, the dnsd fuzz test and the soak flood all draw from here."""

from __future__ import annotations

import random
import struct

import dns.message
import dnslib


def seeds() -> list[bytes]:
    out = []
    for name, rdtype in (("alice.gw.test", "A"), ("gw.test", "SOA"), ("nx.gw.test", "TXT"),
                         ("_acme-challenge.shop.example.org", "TXT"), ("example.com", "ANY")):
        for edns in (False, 0):
            out.append(dns.message.make_query(name, rdtype, use_edns=edns).to_wire())
    out.append(dnslib.DNSRecord.question("alice.gw.test", "A").pack())
    return out


def pointer_packet(rnd: random.Random) -> bytes:
    qd, an = rnd.randrange(0, 3), rnd.randrange(0, 40)
    body = bytearray()
    for _ in range(rnd.randrange(1, 200)):
        kind = rnd.random()
        if kind < 0.5:
            target = rnd.randrange(0, 12 + len(body) + 4)
            body += bytes((0xC0 | (target >> 8) & 0x3F, target & 0xFF))
        elif kind < 0.8:
            body += b"\x01a"
        else:
            body += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 6)))
    return struct.pack(">HHHHHH", rnd.randrange(65536), rnd.choice((0, 0x0100)), qd, an, 0,
                       rnd.randrange(0, 3)) + bytes(body)


def mutate(rnd: random.Random, seed: bytes) -> bytes:
    b = bytearray(seed)
    op = rnd.randrange(6)
    if op == 0:  # bit flips
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif op == 1:  # truncate
        del b[rnd.randrange(len(b)) :]
    elif op == 2:  # random byte values
        for _ in range(rnd.randrange(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
    elif op == 3:  # counts
        b[4 + rnd.randrange(8)] = rnd.randrange(256)
    elif op == 4:  # insert junk
        i = rnd.randrange(len(b) + 1)
        b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8)))
    else:  # splice in a pointer
        i = rnd.randrange(12, len(b))
        b[i : i + 2] = bytes((0xC0, rnd.randrange(256)))
    return bytes(b)
