#!/usr/bin/env python3
"""Write the benchmark zone twice: a zone file for Knot and a webgateway store + config.

Same names on both sides (the bench.test shape of /work/shared/peers/dns/gen_zone.py):
N reserved names h0..h{N-1} (A only: Knot's zone has exactly the gateway A for each,
as our dnsd answers A for a reserved name), N/10 TXT names t0..t{N/10-1}, SOA/NS and
glue. And a dnsperf query file: 70 % A hits, 15 % NXDOMAIN, 15 % TXT; and for run.sh's
MIX=resolver, files of what recursive resolvers send (``write_resolver_queries``).

The store is loaded through the Store API (owner, put_name, add_txt) for small zones;
above --api-limit names the rows go in with one bulk INSERT on the store's own schema
and connection (a million API writes, each durable, would take the benchmark's budget).
``load_postgres`` puts the same rows in a PostgreSQL store (bench/store).

usage: gen.py OUTDIR N DNS_PORT
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from webgateway.model import Name
from webgateway.pg_store import PgStore
from webgateway.sqlite_store import SqliteStore

ZONE = "bench.test"
GATEWAY = "198.18.255.254"


def write_zone(out: Path, n: int) -> None:
    lines = [
        f"$ORIGIN {ZONE}.",
        "$TTL 300",
        "@ IN SOA ns1 hostmaster 1 3600 600 1209600 30",
        "@ IN NS ns1",
        "ns1 IN A 127.0.0.1",
        f"@ IN A {GATEWAY}",
    ]
    lines += [f"h{i} IN A {GATEWAY}" for i in range(n)]
    lines += [f't{i} IN TXT "v=bench{i} some-text-payload"' for i in range(max(1, n // 10))]
    (out / "bench.test.zone").write_text("\n".join(lines) + "\n")


def write_queries(out: Path, n: int) -> None:
    rnd = random.Random(20240101)
    q = []
    for _ in range(20_000):
        r = rnd.random()
        if r < 0.70:
            q.append(f"h{rnd.randrange(n)}.{ZONE} A")
        elif r < 0.85:
            q.append(f"nx{rnd.randrange(1_000_000)}.{ZONE} A")
        else:
            q.append(f"t{rnd.randrange(max(1, n // 10))}.{ZONE} TXT")
    (out / "queries.txt").write_text("\n".join(q) + "\n")


#: The resolver mix: (share, owner kind, type). Types as a public zone's authoritative
#: server sees them: A and AAAA for every name, HTTPS from browsers (RFC 9460), CAA and
#: TXT from CAs and mail checks, SOA/NS from resolvers' zone cuts, MX for data that is not
#: there; owners "h" (reserved names), "t" (TXT names), "nx" (nonexistent), "@" (apex).
RESOLVER_MIX = (
    (0.40, "h", "A"), (0.18, "h", "AAAA"), (0.12, "h", "TYPE65"), (0.03, "h", "MX"),
    (0.08, "t", "TXT"), (0.06, "nx", "A"), (0.04, "nx", "AAAA"), (0.02, "@", "CAA"),
    (0.02, "@", "NS"), (0.02, "@", "SOA"), (0.01, "@", "A"), (0.02, "t", "TYPE65"),
)
RESOLVER_FILES = 3  # one per EDNS flavour run.sh sends: EDNS, EDNS+DO, EDNS+DO+cookie
RESOLVER_LINES = 200_000  # per file: more lines than one run sends, each in its own case


def _owner(kind: str, n: int, rnd: random.Random) -> str:
    if kind == "h":
        return f"h{rnd.randrange(n)}.{ZONE}"
    if kind == "t":
        return f"t{rnd.randrange(max(1, n // 10))}.{ZONE}"
    if kind == "nx":
        return f"nx{rnd.randrange(1_000_000)}.{ZONE}"
    return ZONE


def write_resolver_queries(out: Path, n: int, pool: int = 20_000) -> None:
    """``resolver_K.txt``: POOL distinct questions drawn by RESOLVER_MIX, asked over and
    over, each line in its own random 0x20 letter case (as Unbound with use-caps-for-id,
    Google Public DNS and others send every query), so no two lines repeat their bytes;
    and ``resolver_pool.txt``, each question once (run.sh's warm-up, as a server that has
    been up for a while has seen them)."""
    rnd = random.Random(20240102)
    shares = [s for s, _, _ in RESOLVER_MIX]
    questions = [
        (_owner(kind, n, rnd), rdtype)
        for _, kind, rdtype in rnd.choices(RESOLVER_MIX, weights=shares, k=pool)
    ]
    (out / "resolver_pool.txt").write_text("".join(f"{q} {t}\n" for q, t in questions))
    for k in range(RESOLVER_FILES):
        lines = []
        for _ in range(RESOLVER_LINES):
            name, rdtype = questions[rnd.randrange(pool)]
            bits = rnd.getrandbits(len(name))
            cased = "".join(c.upper() if bits >> i & 1 else c for i, c in enumerate(name))
            lines.append(f"{cased} {rdtype}")
        (out / f"resolver_{k}.txt").write_text("\n".join(lines) + "\n")


def write_config(out: Path, port: int) -> None:
    (out / "webgateway.toml").write_text(
        f"""[zone]
name = "{ZONE}"
gateway_ipv4 = ["{GATEWAY}"]
nameservers = {{ "ns1.{ZONE}" = ["127.0.0.1"] }}
ttl = 300
negative_ttl = 30
[dns]
listen = ["127.0.0.1:{port}"]
[store]
path = "store/webgateway.db"
certs_dir = "store/certs"
poll_interval = 0.05
[log]
level = "warning"
"""
    )


def name_rows(n: int, owner_id: int, now: float) -> Iterator[tuple[str, int, float, float]]:
    """(label, owner, created, updated) of the N reserved names (no backends, terminate)."""
    return ((f"h{i}", owner_id, now, now) for i in range(n))


def txt_rows(n: int, now: float) -> Iterator[tuple[str, str, float]]:
    return ((f"t{i}.{ZONE}", f"v=bench{i} some-text-payload", now) for i in range(max(1, n // 10)))


async def load_store(out: Path, n: int, api_limit: int) -> None:
    db = out / "store" / "webgateway.db"
    for p in db.parent.glob("webgateway.db*"):
        p.unlink()
    store = SqliteStore(db)
    await store.open()
    try:  # closed on failure too: its thread would keep the process (and the bench lock)
        await store.db.execute("PRAGMA synchronous=OFF")  # throw-away store: speed over durability
        owner = await store.create_owner("bench", "bench-token-hash")
        if n <= api_limit:
            for i in range(n):
                await store.put_name(Name(f"h{i}", owner.id, ()), n + 1)
            for fqdn, value, _ in txt_rows(n, 0):
                await store.add_txt(fqdn, value)
        else:
            now = time.time()
            await store.db.execute("BEGIN")
            await store.db.executemany(
                "INSERT INTO names (label, owner_id, backends, tls, proxy_protocol, http2, created,"
                " updated) VALUES (?, ?, '[]', 'terminate', 0, 0, ?, ?)",
                name_rows(n, owner.id, now),
            )
            await store.db.executemany("INSERT INTO txt VALUES (?, ?, ?)", txt_rows(n, now))
            await store.db.execute("UPDATE serial SET value = value + 1 WHERE id = 1")
            await store.db.execute("COMMIT")
    finally:
        await store.close()


async def load_postgres(url: str, n: int) -> None:
    """The same names and TXT into an empty PostgreSQL store, by COPY (bench/store)."""
    store = PgStore(url, timeout=600)
    await store.open()
    try:
        owner = await store.create_owner("bench", "bench-token-hash")
        now = time.time()
        conn = store.conn
        async with conn.transaction():
            await conn.copy_records_to_table(
                "names", columns=["label", "owner_id", "backends", "tls", "proxy_protocol",
                                  "http2", "created", "updated"],
                records=((label, o, "[]", "terminate", 0, 0, c, u)
                         for label, o, c, u in name_rows(n, owner.id, now)))
            await conn.copy_records_to_table("txt", records=txt_rows(n, now))
            await conn.execute("UPDATE serial SET value = value + 1 WHERE id = 1")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await store.close()


def main() -> None:
    out, n, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    api_limit = int(sys.argv[4]) if len(sys.argv) > 4 else 20_000
    out.mkdir(parents=True, exist_ok=True)
    write_zone(out, n)
    write_queries(out, n)
    write_resolver_queries(out, n)
    write_config(out, port)
    t0 = time.monotonic()
    asyncio.run(load_store(out, n, api_limit))
    print(f"zone of {n} names written, store loaded in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
