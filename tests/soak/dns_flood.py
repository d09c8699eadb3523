"""A hostile DNS client and an honest one, against ``webgateway dnsd`` run as a subprocess.

Shared by tests/soak/test_dns_attack.py (short, bounded runs) and bench/attack/dns_attack.py
(longer runs that print figures). The server is a real process so its memory and CPU
are its own, read from /proc.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.gateway import write_config
from tests.hostile_dns import mutate, pointer_packet, seeds
from tests.procs import Proc, wait_dns
from tests.support import ZONE
from webgateway.addresses import parse_hostport
from webgateway.config import load_config
from webgateway.model import Name
from webgateway.sqlite_store import SqliteStore

BIG_TXT_NAME = f"_acme-challenge.{ZONE}"
BIG_TXT_COUNT = 50
LEGIT = (f"alice.{ZONE}", "A", {"127.0.0.1"})
#: The query mix the amplification figures are taken over.
MIX = [(f"alice.{ZONE}", "A"), (f"alice.{ZONE}", "AAAA"), (f"alice.{ZONE}", "ANY"),
       (ZONE, "ANY"), (ZONE, "SOA"), (ZONE, "NS"), (ZONE, "TXT"), (f"nx.{ZONE}", "A"),
       (f"_acme-challenge.{ZONE}", "TXT"), (f"_acme-challenge.{ZONE}", "ANY"),
       ("example.com", "ANY")]


def big_txt_values() -> list[str]:
    return [f"{i:02d}" + "v" * 200 for i in range(BIG_TXT_COUNT)]


async def seed(cfg_path: Path) -> None:
    """The zone every run uses: a few names, and 50 large TXT values at one name."""
    cfg = load_config(cfg_path)
    cfg.store.path.parent.mkdir(parents=True, exist_ok=True)
    cfg.store.certs_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(cfg.store.path, 0.05)
    await store.open()
    try:
        owner = await store.create_owner("alice", "hash-alice")
        for label in ("alice", "bob", "carol"):
            await store.put_name(Name(label, owner.id, (parse_hostport("10.0.0.7:80"),)), 100)
        for v in big_txt_values():
            await store.add_txt(BIG_TXT_NAME, v)
    finally:
        await store.close()


@dataclass
class Dnsd:
    proc: Proc
    host: str
    port: int


@contextlib.contextmanager
def dnsd(tmp: Path, **dns_cfg: object) -> Iterator[Dnsd]:
    """``webgateway dnsd --config`` on a seeded store; stopped by its PID."""
    import asyncio

    cfg = write_config(tmp, dns=dict(dns_cfg), log={"level": "warning"})
    asyncio.run(seed(cfg))
    port = load_config(cfg).dns.listen[0].port
    proc = Proc("dnsd", [sys.executable, "-m", "webgateway.cli", "dnsd", "--config", str(cfg)],
                tmp / "dnsd.log")
    try:
        wait_dns("127.0.0.1", port, ZONE, proc)
        yield Dnsd(proc, "127.0.0.1", port)
    finally:
        proc.stop()


# ------------------------------------------------------------------ hostile packets

KINDS = ("random", "pointers", "oversized", "counts", "runt", "mutated")


def hostile(rnd: random.Random, kind: str) -> bytes:
    """One hostile datagram of the given kind."""
    if kind == "random":
        return rnd.randbytes(rnd.randrange(12, 512))
    if kind == "pointers":
        return pointer_packet(rnd)
    if kind == "oversized":  # a valid query buried in a datagram far larger than any query
        q = dns.message.make_query(f"x{rnd.randrange(10**6)}.{ZONE}", "A").to_wire()
        return q + rnd.randbytes(rnd.randrange(1000, 4000))
    if kind == "counts":  # a valid question under counts that promise far more records
        b = bytearray(dns.message.make_query(f"alice.{ZONE}", "TXT").to_wire())
        b[0:2] = rnd.randbytes(2)
        b[4:12] = struct.pack(">HHHH", *(rnd.randrange(65536) for _ in range(4)))
        return bytes(b)
    if kind == "runt":  # a header cut short
        return rnd.randbytes(rnd.randrange(0, 12))
    return mutate(rnd, rnd.choice(_SEEDS))


_SEEDS = seeds()


def corpus(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [hostile(rnd, KINDS[i % len(KINDS)]) for i in range(n)]


def flood_udp(host: str, port: int, packets: list[bytes], seconds: float,
              rate: float = 0.0, source: str = "") -> int:
    """Send ``packets`` round and round for ``seconds`` without reading a reply; returns sent.

    Replies come back to a socket nobody reads (the kernel drops them), as with a spoofed
    source. Later rounds repeat the same bytes, so the server may answer some from its cache.
    ``rate`` (datagrams/s) paces the flood; 0 sends as fast as the socket takes them.
    ``source``: the address to send from (say 127.0.1.1, another /24 than the honest
    client's 127.0.0.1, as rate limiting by source network would see a real attacker).
    """
    sent = 0
    end = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        if source:
            s.bind((source, 0))
        addr = (host, port)
        while time.monotonic() < end:
            for p in packets:
                try:
                    s.sendto(p, addr)
                    sent += 1
                except BlockingIOError:
                    time.sleep(0.0005)
                except OSError:  # ICMP refusals surfacing: keep going
                    pass
                if sent % 32 == 0:
                    now = time.monotonic()
                    if now >= end:
                        break
                    if rate:  # paced: never ahead of rate * elapsed
                        ahead = sent / rate - (now - (end - seconds))
                        if ahead > 0:
                            time.sleep(ahead)
    return sent


def flood_tcp(host: str, port: int, packets: list[bytes], conns: int) -> int:
    """Hostile frames over ``conns`` TCP connections; returns how many reply frames came back."""
    replies = 0
    per = max(1, len(packets) // conns)
    for c in range(conns):
        chunk = packets[c * per : (c + 1) * per]
        with contextlib.suppress(OSError), socket.create_connection((host, port), 3) as s:
            s.settimeout(2)
            s.sendall(b"".join(len(p).to_bytes(2, "big") + p for p in chunk))
            s.shutdown(socket.SHUT_WR)
            buf = b""
            with contextlib.suppress(OSError):
                while data := s.recv(65536):
                    buf += data
            while len(buf) >= 2:
                n = int.from_bytes(buf[:2], "big")
                if len(buf) < 2 + n:
                    break
                buf = buf[2 + n :]
                replies += 1
    return replies


# ------------------------------------------------------------------ the honest client

def legit_once(host: str, port: int, tries: int = 3, timeout: float = 1.0) -> bool:
    """One dnspython query, retried on loss like a resolver would; True when answered right."""
    name, rdtype, want = LEGIT
    for _ in range(tries):
        q = dns.message.make_query(name, rdtype)
        try:
            r = dns.query.udp(q, host, port=port, timeout=timeout)
        except dns.exception.Timeout:
            continue
        got = {rd.to_text() for rrset in r.answer for rd in rrset
               if rrset.rdtype == dns.rdatatype.from_text(rdtype)}
        return r.id == q.id and got == want
    return False


def legit_rate(host: str, port: int, seconds: float) -> tuple[int, int, float]:
    """Sequential honest queries for ``seconds``: (answered right, failed, elapsed)."""
    ok = bad = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if legit_once(host, port, tries=1, timeout=0.5):
            ok += 1
        else:
            bad += 1
    return ok, bad, time.monotonic() - t0


def flood_worker(host: str, port: int, n: int, seed: int, seconds: float,
                 rate: float = 0.0, source: str = "") -> int:
    """Entry point for a flooding process (multiprocessing), so the GIL is not shared."""
    return flood_udp(host, port, corpus(n, seed), seconds, rate, source)
