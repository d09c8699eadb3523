"""SQLite implementation of the store (aiosqlite, WAL, synchronous=FULL).

One connection, one lock: SQLite serializes writers anyway, and the API's write rate is
tiny next to what the data plane reads from memory. ``synchronous=FULL`` makes a write
durable before the API acknowledges it, so ``kill -9`` (or power loss) loses nothing
that was answered 2xx. Other processes sharing the file see changes by polling the
serial row, which costs one indexed read per ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from webgateway.addresses import HostPort, parse_hostport
from webgateway.model import (
    Certificate,
    CertState,
    ChangeSet,
    Domain,
    DomainState,
    Name,
    Owner,
    OwnerRemoval,
    OwnerSummary,
    Snapshot,
    TlsMode,
    TxtRecord,
)
from webgateway.store import Conflict, Forbidden, NotFound, QuotaExceeded, StoreUnavailable

#: Each entry upgrades the schema by one version (PRAGMA user_version). Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE serial (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
    INSERT INTO serial VALUES (1, 1);
    CREATE TABLE changes (
        serial INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
        PRIMARY KEY (serial, kind, key));
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE owners (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL);
    CREATE TABLE names (
        label TEXT PRIMARY KEY, owner_id INTEGER NOT NULL REFERENCES owners(id),
        backends TEXT NOT NULL, tls TEXT NOT NULL, proxy_protocol INTEGER NOT NULL,
        http2 INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
    CREATE INDEX names_owner ON names(owner_id);
    CREATE TABLE domains (
        fqdn TEXT PRIMARY KEY, label TEXT NOT NULL REFERENCES names(label),
        owner_id INTEGER NOT NULL REFERENCES owners(id), challenge_label TEXT NOT NULL,
        state TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL);
    CREATE INDEX domains_owner ON domains(owner_id);
    CREATE INDEX domains_label ON domains(label);
    CREATE TABLE txt (
        fqdn TEXT NOT NULL, value TEXT NOT NULL, created REAL NOT NULL,
        PRIMARY KEY (fqdn, value));
    CREATE TABLE certificates (
        id TEXT PRIMARY KEY, domains TEXT NOT NULL, state TEXT NOT NULL,
        cert_path TEXT NOT NULL, key_path TEXT NOT NULL,
        not_before REAL NOT NULL, not_after REAL NOT NULL, renew_at REAL NOT NULL,
        failures INTEGER NOT NULL, next_attempt REAL NOT NULL, last_error TEXT NOT NULL,
        order_url TEXT NOT NULL, updated REAL NOT NULL);
    """,
    # 2: domains become claims: one row per (domain, owner), keyed by the claim's random
    # challenge label; at most one claim per domain holds it (verified or active). Existing
    # rows keep their challenge label, so the CNAMEs their owners created keep working.
    """
    CREATE TABLE claims (
        challenge_label TEXT PRIMARY KEY, fqdn TEXT NOT NULL,
        label TEXT NOT NULL REFERENCES names(label),
        owner_id INTEGER NOT NULL REFERENCES owners(id),
        state TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
        UNIQUE (fqdn, owner_id));
    INSERT INTO claims
        SELECT challenge_label, fqdn, label, owner_id, state, detail, created, created
        FROM domains;
    DROP TABLE domains;
    ALTER TABLE claims RENAME TO domains;
    CREATE UNIQUE INDEX domains_held ON domains(fqdn) WHERE state IN ('verified', 'active');
    CREATE INDEX domains_owner ON domains(owner_id);
    CREATE INDEX domains_label ON domains(label);
    CREATE INDEX domains_state ON domains(state, created);
    """,
    # 3: reverse tunnels (a name served through nodes that dial in, with its token's hash)
    """
    ALTER TABLE names ADD COLUMN tunnel INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE names ADD COLUMN tunnel_token_hash TEXT NOT NULL DEFAULT '';
    """,
)

#: Changes older than this many serials are pruned; a consumer that far behind reloads.
CHANGES_KEPT = 100_000


_TLS = {m.value: m for m in TlsMode}


@functools.lru_cache(maxsize=4096)
def _backends(raw: str) -> tuple[HostPort, ...]:
    """Backends column -> values; cached because many names share one backend list."""
    return tuple(parse_hostport(b) for b in json.loads(raw))


def _name(row: Any) -> Name:
    return Name(
        row[0], row[1], _backends(row[2]), _TLS[row[3]], bool(row[4]), bool(row[5]), row[6],
        row[7], bool(row[8]), row[9],
    )


def _domain(row: Any) -> Domain:
    return Domain(row[0], row[1], row[2], row[3], DomainState(row[4]), row[5], row[6], row[7])


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _cert(row: Any) -> Certificate:
    return Certificate(
        id=row[0],
        domains=tuple(json.loads(row[1])),
        state=CertState(row[2]),
        cert_path=row[3],
        key_path=row[4],
        not_before=row[5],
        not_after=row[6],
        renew_at=row[7],
        failures=row[8],
        next_attempt=row[9],
        last_error=row[10],
        order_url=row[11],
        updated=row[12],
    )


_NAME_COLS = (
    "label, owner_id, backends, tls, proxy_protocol, http2, created, updated, tunnel,"
    " tunnel_token_hash"
)
_DOMAIN_COLS = "fqdn, label, owner_id, challenge_label, state, detail, created, updated"
#: SQL for "this claim holds its domain" (DomainState.holds) and "this claim is closed"
_HELD = "state IN ('verified', 'active')"
_CLOSED = "state IN ('dropped', 'expired')"
_CERT_COLS = (
    "id, domains, state, cert_path, key_path, not_before, not_after, renew_at,"
    " failures, next_attempt, last_error, order_url, updated"
)


class SqliteStore:
    def __init__(self, path: Path, poll_interval: float = 0.05) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._pending: list[tuple[str, str]] = []
        self.write_observer: Callable[[float], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=5000",
            "PRAGMA foreign_keys=ON",
        ):
            await self._db.execute(pragma)
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def _migrate(self) -> None:
        async with self._lock:
            (version,) = await self._one("PRAGMA user_version")
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this build knows"
                    f" {len(MIGRATIONS)}: upgrade webgateway"
                )
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in filter(str.strip, script.split(";")):
                        await self.db.execute(stmt)
                    await self.db.execute(f"PRAGMA user_version = {i}")
                    await self.db.execute("COMMIT")
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise

    # ------------------------------------------------------------------ helpers
    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        async with self.db.execute(sql, tuple(args)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        async with self.db.execute(sql, tuple(args)) as cur:
            return list(await cur.fetchall())

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[None]:
        """One transaction, one serial bump, recording every key touched via ``_touch``."""
        async with self._lock:
            self._pending = []
            touched = False
            t0 = time.perf_counter()
            try:
                await self._begin("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"the store cannot start a write: {e}") from None
            try:
                yield
                if self._pending:
                    (serial,) = await self._one(
                        "UPDATE serial SET value = value + 1 WHERE id = 1 RETURNING value"
                    )
                    await self.db.executemany(
                        "INSERT OR IGNORE INTO changes VALUES (?, ?, ?)",
                        [(serial, k, key) for k, key in self._pending],
                    )
                    if serial % 1000 == 0:
                        await self.db.execute(
                            "DELETE FROM changes WHERE serial <= ?", (serial - CHANGES_KEPT,)
                        )
                await self.db.execute("COMMIT")
                touched = bool(self._pending)
                if self.write_observer is not None:
                    self.write_observer(time.perf_counter() - t0)
            except sqlite3.Error as e:
                await self._rollback()
                raise StoreUnavailable(f"the store refused the write: {e}") from None
            except BaseException:
                await self._rollback()
                raise
        if touched:
            self._notify()

    async def _begin(self, sql: str) -> None:
        """BEGIN that never leaves the connection inside a transaction when the caller is
        cancelled (a service stopping): aiosqlite runs the statement in its thread even
        after the awaiting task is gone, so the ROLLBACK is queued right behind it."""
        try:
            await self.db.execute(sql)
        except asyncio.CancelledError:
            await self._rollback()
            raise

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self.db.execute("ROLLBACK")

    def _touch(self, kind: str, key: str) -> None:
        self._pending.append((kind, key))

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    # ------------------------------------------------------------------ change feed
    async def serial(self) -> int:
        async with self._read():
            (value,) = await self._one("SELECT value FROM serial WHERE id = 1")
        return int(value)

    async def wait_changed(self, after: int, max_wait: float) -> int:
        loop = asyncio.get_running_loop()
        end = loop.time() + max_wait
        while True:
            ev = self._changed
            current = await self.serial()
            left = end - loop.time()
            if current > after or left <= 0:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), min(left, self.poll_interval))

    async def snapshot(self) -> Snapshot:
        async with self._read():
            await self._begin("BEGIN")
            try:
                (serial,) = await self._one("SELECT value FROM serial WHERE id = 1")
                names = {r[0]: _name(r) for r in await self._all(f"SELECT {_NAME_COLS} FROM names")}
                domains: dict[str, Domain] = {}
                claims: dict[str, Domain] = {}
                for r in await self._all(
                    f"SELECT {_DOMAIN_COLS} FROM domains WHERE state IN (?, ?, ?)",
                    ("pending", "verified", "active"),
                ):
                    d = _domain(r)
                    if d.state.holds:
                        domains[d.fqdn] = d
                    else:
                        claims[d.challenge_label] = d
                txt: dict[str, list[str]] = {}
                for fqdn, value in await self._all("SELECT fqdn, value FROM txt ORDER BY created"):
                    txt.setdefault(fqdn, []).append(value)
                certs = {
                    r[0]: _cert(r)
                    for r in await self._all(f"SELECT {_CERT_COLS} FROM certificates")
                }
                meta = {k: v for k, v in await self._all("SELECT key, value FROM meta")}
            finally:
                await self.db.execute("COMMIT")
        txts = {k: tuple(v) for k, v in txt.items()}
        return Snapshot(int(serial), names, domains, txts, certs, meta, claims)

    async def changes_since(self, serial: int) -> ChangeSet | None:
        async with self._read():
            await self._begin("BEGIN")
            try:
                (current,) = await self._one("SELECT value FROM serial WHERE id = 1")
                (oldest,) = await self._one("SELECT MIN(serial) FROM changes")
                if serial > current:
                    return None  # the store was replaced; start over
                if serial < current and (oldest is None or oldest > serial + 1):
                    return None
                rows = await self._all(
                    "SELECT DISTINCT kind, key FROM changes WHERE serial > ?", (serial,)
                )
                names: dict[str, Name | None] = {}
                domains: dict[str, Domain | None] = {}
                txt: dict[str, tuple[str, ...]] = {}
                certs: dict[str, Certificate | None] = {}
                meta: dict[str, str | None] = {}
                claims: dict[str, Domain | None] = {}
                for kind, key in rows:
                    if kind == "name":
                        r = await self._one(f"SELECT {_NAME_COLS} FROM names WHERE label=?", (key,))
                        names[key] = _name(r) if r else None
                    elif kind == "domain":
                        r = await self._one(
                            f"SELECT {_DOMAIN_COLS} FROM domains WHERE fqdn=? AND {_HELD}", (key,)
                        )
                        domains[key] = _domain(r) if r else None
                    elif kind == "claim":
                        r = await self._one(
                            f"SELECT {_DOMAIN_COLS} FROM domains"
                            " WHERE challenge_label=? AND state='pending'",
                            (key,),
                        )
                        claims[key] = _domain(r) if r else None
                    elif kind == "txt":
                        vals = await self._all(
                            "SELECT value FROM txt WHERE fqdn=? ORDER BY created", (key,)
                        )
                        txt[key] = tuple(v for (v,) in vals)
                    elif kind == "cert":
                        r = await self._one(
                            f"SELECT {_CERT_COLS} FROM certificates WHERE id=?", (key,)
                        )
                        certs[key] = _cert(r) if r else None
                    elif kind == "meta":
                        r = await self._one("SELECT value FROM meta WHERE key=?", (key,))
                        meta[key] = str(r[0]) if r else None
                return ChangeSet(int(current), names, domains, txt, certs, meta, claims)
            finally:
                await self.db.execute("COMMIT")

    # ------------------------------------------------------------------ owners
    async def create_owner(self, name: str, token_hash: str) -> Owner:
        async with self._write():
            if await self._one("SELECT 1 FROM owners WHERE name=?", (name,)):
                raise Conflict(f"an owner named {name!r} exists already")
            cur = await self.db.execute(
                "INSERT INTO owners (name, token_hash, created) VALUES (?, ?, ?)",
                (name, token_hash, time.time()),
            )
            owner_id = cur.lastrowid
            self._touch("owner", str(owner_id))
        assert owner_id is not None
        return Owner(owner_id, name)

    async def owner_by_token_hash(self, token_hash: str) -> Owner | None:
        async with self._read():
            r = await self._one("SELECT id, name FROM owners WHERE token_hash=?", (token_hash,))
        return Owner(r[0], r[1]) if r else None

    async def list_owners(self) -> list[OwnerSummary]:
        async with self._read():
            rows = await self._all(
                "SELECT o.name, o.created,"
                " (SELECT COUNT(*) FROM names n WHERE n.owner_id = o.id),"
                " (SELECT COUNT(*) FROM domains d WHERE d.owner_id = o.id)"
                " FROM owners o ORDER BY o.name"
            )
        return [OwnerSummary(*r) for r in rows]

    async def set_owner_token(self, name: str, token_hash: str) -> Owner:
        async with self._write():
            r = await self._one("SELECT id FROM owners WHERE name=?", (name,))
            if not r:
                raise NotFound(f"there is no owner {name!r}")
            await self.db.execute(
                "UPDATE owners SET token_hash=? WHERE id=?", (token_hash, r[0])
            )
            self._touch("owner", str(r[0]))
        return Owner(r[0], name)

    async def delete_owner(self, name: str) -> OwnerRemoval:
        async with self._write():
            r = await self._one("SELECT id FROM owners WHERE name=?", (name,))
            if not r:
                raise NotFound(f"there is no owner {name!r}")
            owner_id = r[0]
            domains = tuple(
                fqdn
                for (fqdn,) in await self._all(
                    "SELECT fqdn FROM domains WHERE owner_id=? ORDER BY fqdn", (owner_id,)
                )
            )
            labels = tuple(
                label
                for (label,) in await self._all(
                    "SELECT label FROM names WHERE owner_id=? ORDER BY label", (owner_id,)
                )
            )
            await self._delete_claims("owner_id=?", (owner_id,))
            await self.db.execute("DELETE FROM names WHERE owner_id=?", (owner_id,))
            await self.db.execute("DELETE FROM owners WHERE id=?", (owner_id,))
            for label in labels:
                self._touch("name", label)
            self._touch("owner", str(owner_id))
        return OwnerRemoval(name, labels, domains)

    async def owner_names(self) -> dict[int, str]:
        async with self._read():
            rows = await self._all("SELECT id, name FROM owners")
        return {int(r[0]): str(r[1]) for r in rows}

    # ------------------------------------------------------------------ names
    async def put_name(self, name: Name, max_names: int) -> bool:
        now = time.time()
        async with self._write():
            r = await self._one(
                "SELECT owner_id, created, tunnel_token_hash FROM names WHERE label=?",
                (name.label,),
            )
            if r and r[0] != name.owner_id:
                raise Forbidden(f"{name.label!r} belongs to another owner")
            if not r:
                (count,) = await self._one(
                    "SELECT COUNT(*) FROM names WHERE owner_id=?", (name.owner_id,)
                )
                if count >= max_names:
                    raise QuotaExceeded(f"an owner may hold at most {max_names} names")
            # A tunnel name keeps its token unless a new hash is given; a plain one has none.
            token_hash = (name.tunnel_token_hash or (r[2] if r else "")) if name.tunnel else ""
            await self.db.execute(
                f"INSERT OR REPLACE INTO names ({_NAME_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    name.label,
                    name.owner_id,
                    json.dumps([str(b) for b in name.backends]),
                    str(name.tls),
                    int(name.proxy_protocol),
                    int(name.http2),
                    r[1] if r else now,
                    now,
                    int(name.tunnel),
                    token_hash,
                ),
            )
            self._touch("name", name.label)
        return r is None

    async def set_tunnel_token(self, label: str, owner_id: int, token_hash: str) -> None:
        async with self._write():
            r = await self._one("SELECT owner_id, tunnel FROM names WHERE label=?", (label,))
            if not r or r[0] != owner_id:
                raise NotFound(f"you have no name {label!r}")
            if not r[1]:
                raise Conflict(f"{label!r} is not a tunnel name; set \"tunnel\": true first")
            await self.db.execute(
                "UPDATE names SET tunnel_token_hash=?, updated=? WHERE label=?",
                (token_hash, time.time(), label),
            )
            self._touch("name", label)

    async def get_name(self, label: str) -> Name | None:
        async with self._read():
            r = await self._one(f"SELECT {_NAME_COLS} FROM names WHERE label=?", (label,))
        return _name(r) if r else None

    async def list_names(self, owner_id: int | None = None) -> list[Name]:
        async with self._read():
            if owner_id is None:
                rows = await self._all(f"SELECT {_NAME_COLS} FROM names ORDER BY label")
            else:
                rows = await self._all(
                    f"SELECT {_NAME_COLS} FROM names WHERE owner_id=? ORDER BY label", (owner_id,)
                )
        return [_name(r) for r in rows]

    async def delete_name(self, label: str, owner_id: int) -> None:
        async with self._write():
            r = await self._one("SELECT owner_id FROM names WHERE label=?", (label,))
            if not r or r[0] != owner_id:
                raise NotFound(f"you have no name {label!r}")
            await self._delete_claims("label=?", (label,))
            await self.db.execute("DELETE FROM names WHERE label=?", (label,))
            self._touch("name", label)

    # ------------------------------------------------------------------ domains (claims)
    def _touch_claim(self, fqdn: str, challenge_label: str) -> None:
        """A claim changed: the pending-claims feed, and the domain's holder, may have."""
        self._touch("domain", fqdn)
        self._touch("claim", challenge_label)

    async def _delete_claims(self, where: str, args: tuple[Any, ...]) -> int:
        rows = await self._all(f"SELECT fqdn, challenge_label FROM domains WHERE {where}", args)
        for fqdn, chal in rows:
            self._touch_claim(fqdn, chal)
        await self.db.execute(f"DELETE FROM domains WHERE {where}", args)
        return len(rows)

    async def put_domain(self, domain: Domain, max_domains: int) -> bool:
        """The owner's claim on ``domain.fqdn``: created (True), or its name updated.

        A pending claim of another owner blocks nothing; a domain another owner holds
        (its proof was seen) is a Conflict. A closed claim (dropped, expired) of the same
        owner is replaced by a fresh pending one with ``domain.challenge_label``.
        """
        now = time.time()
        async with self._write():
            n = await self._one("SELECT owner_id FROM names WHERE label=?", (domain.label,))
            if not n or n[0] != domain.owner_id:
                raise NotFound(f"you have no name {domain.label!r} to attach the domain to")
            held = await self._one(
                f"SELECT owner_id, updated FROM domains WHERE fqdn=? AND {_HELD}", (domain.fqdn,)
            )
            if held and held[0] != domain.owner_id:
                raise Conflict(
                    f"{domain.fqdn} is held by another owner: on {_utc(held[1])} the CNAME"
                    f" _acme-challenge.{domain.fqdn} pointed at that owner's target, which"
                    " proves control of the domain's DNS; only the holder (DELETE) or the"
                    " gateway's operator can release it"
                )
            mine = await self._one(
                "SELECT challenge_label, state FROM domains WHERE fqdn=? AND owner_id=?",
                (domain.fqdn, domain.owner_id),
            )
            if mine and not DomainState(mine[1]).closed:
                cur = await self.db.execute(
                    "UPDATE domains SET label=? WHERE challenge_label=? AND label!=?",
                    (domain.label, mine[0], domain.label),
                )
                if cur.rowcount:
                    self._touch_claim(domain.fqdn, mine[0])
                return False
            (count,) = await self._one(
                f"SELECT COUNT(*) FROM domains WHERE owner_id=? AND NOT {_CLOSED}",
                (domain.owner_id,),
            )
            if count >= max_domains:
                raise QuotaExceeded(f"an owner may claim at most {max_domains} domains")
            if mine:
                await self._delete_claims("challenge_label=?", (mine[0],))
            await self.db.execute(
                f"INSERT INTO domains ({_DOMAIN_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                (
                    domain.fqdn,
                    domain.label,
                    domain.owner_id,
                    domain.challenge_label,
                    str(DomainState.PENDING),
                    domain.detail,
                    now,
                    now,
                ),
            )
            self._touch_claim(domain.fqdn, domain.challenge_label)
        return True

    async def get_domain(self, fqdn: str, owner_id: int | None = None) -> Domain | None:
        """The owner's claim; without an owner, the claim holding the domain, else the newest."""
        sql = f"SELECT {_DOMAIN_COLS} FROM domains WHERE fqdn=?"
        args: tuple[Any, ...] = (fqdn,)
        if owner_id is not None:
            sql, args = sql + " AND owner_id=?", (fqdn, owner_id)
        async with self._read():
            r = await self._one(sql + f" ORDER BY {_HELD} DESC, created DESC LIMIT 1", args)
        return _domain(r) if r else None

    async def list_domains(self, owner_id: int | None = None) -> list[Domain]:
        async with self._read():
            if owner_id is None:
                rows = await self._all(
                    f"SELECT {_DOMAIN_COLS} FROM domains ORDER BY fqdn, created"
                )
            else:
                rows = await self._all(
                    f"SELECT {_DOMAIN_COLS} FROM domains WHERE owner_id=? ORDER BY fqdn, created",
                    (owner_id,),
                )
        return [_domain(r) for r in rows]

    async def delete_domain(self, fqdn: str, owner_id: int | None) -> None:
        """Remove the owner's claim (``None``, the operator: every claim on ``fqdn``)."""
        where, args = ("fqdn=?", (fqdn,)) if owner_id is None else (
            "fqdn=? AND owner_id=?", (fqdn, owner_id))
        async with self._write():
            if not await self._delete_claims(where, args):
                raise NotFound(f"you have no domain {fqdn!r}")

    async def set_domain_state(self, fqdn: str, state: DomainState, detail: str) -> None:
        """Update the claim holding ``fqdn`` (certd: certificate requested, in place, failed)."""
        if not state.holds:
            raise ValueError(f"{state} is not a state that holds a domain")
        async with self._write():
            r = await self._one(
                f"UPDATE domains SET state=?, detail=? WHERE fqdn=? AND {_HELD}"
                " AND (state!=? OR detail!=?) RETURNING challenge_label",
                (str(state), detail, fqdn, str(state), detail),
            )
            if r:
                self._touch_claim(fqdn, r[0])

    async def set_claim_detail(self, challenge_label: str, detail: str) -> None:
        """What the last DNS check of a pending claim saw (no-op if the claim closed)."""
        async with self._write():
            r = await self._one(
                "UPDATE domains SET detail=? WHERE challenge_label=? AND state='pending'"
                " AND detail!=? RETURNING fqdn",
                (detail, challenge_label, detail),
            )
            if r:
                self._touch_claim(r[0], challenge_label)

    async def verify_claim(self, challenge_label: str, detail: str) -> bool:
        """The claim's proof was seen: it holds its domain now and every other pending claim
        on the domain is dropped, with the reason. False if the claim is no longer pending."""
        now = time.time()
        async with self._write():
            r = await self._one(
                "SELECT fqdn FROM domains WHERE challenge_label=? AND state='pending'",
                (challenge_label,),
            )
            if not r or await self._one(
                f"SELECT 1 FROM domains WHERE fqdn=? AND {_HELD}", (r[0],)
            ):
                return False
            fqdn = r[0]
            await self.db.execute(
                "UPDATE domains SET state='verified', detail=?, updated=? WHERE challenge_label=?",
                (detail, now, challenge_label),
            )
            self._touch_claim(fqdn, challenge_label)
            why = (
                f"dropped on {_utc(now)}: another owner proved control of {fqdn} first (its"
                f" _acme-challenge.{fqdn} CNAME points at that owner's target, not at this"
                " claim's). If the domain is yours, fix its DNS and ask the holder or the"
                " gateway's operator to release it"
            )
            for (chal,) in await self._all(
                "UPDATE domains SET state='dropped', detail=?, updated=?"
                " WHERE fqdn=? AND state='pending' RETURNING challenge_label",
                (why, now, fqdn),
            ):
                self._touch_claim(fqdn, chal)
        return True

    async def expire_claims(self, now: float, ttl: float) -> int:
        """Pending claims older than ``ttl`` expire; closed claims are purged ``ttl`` after
        they closed (an owner reads why in between). Returns how many rows changed."""
        cutoff = now - ttl
        async with self._write():
            expired = await self._all(
                "SELECT fqdn, challenge_label, detail, created FROM domains"
                " WHERE state='pending' AND created < ?",
                (cutoff,),
            )
            for fqdn, chal, last, created in expired:
                why = (
                    f"expired on {_utc(now)}: the _acme-challenge.{fqdn} CNAME of this claim"
                    f" (made {_utc(created)}) was not seen in time; claim the domain again for"
                    " a new target" + (f" (last check: {last})" if last else "")
                )
                await self.db.execute(
                    "UPDATE domains SET state='expired', detail=?, updated=?"
                    " WHERE challenge_label=?",
                    (why[:1000], now, chal),
                )
                self._touch_claim(fqdn, chal)
            purged = await self._delete_claims(f"{_CLOSED} AND updated < ?", (cutoff,))
        return len(expired) + purged

    # ------------------------------------------------------------------ TXT
    async def add_txt(self, fqdn: str, value: str) -> None:
        async with self._write():
            await self.db.execute(
                "INSERT OR IGNORE INTO txt VALUES (?, ?, ?)", (fqdn, value, time.time())
            )
            self._touch("txt", fqdn)

    async def remove_txt(self, fqdn: str, value: str | None = None) -> None:
        async with self._write():
            if value is None:
                cur = await self.db.execute("DELETE FROM txt WHERE fqdn=?", (fqdn,))
            else:
                cur = await self.db.execute(
                    "DELETE FROM txt WHERE fqdn=? AND value=?", (fqdn, value)
                )
            if cur.rowcount:
                self._touch("txt", fqdn)

    async def list_txt(self) -> list[TxtRecord]:
        async with self._read():
            rows = await self._all("SELECT fqdn, value, created FROM txt ORDER BY fqdn, created")
        return [TxtRecord(*r) for r in rows]

    # ------------------------------------------------------------------ certificates
    async def put_certificate(self, cert: Certificate) -> None:
        async with self._write():
            await self.db.execute(
                f"INSERT OR REPLACE INTO certificates ({_CERT_COLS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    cert.id,
                    json.dumps(list(cert.domains)),
                    str(cert.state),
                    cert.cert_path,
                    cert.key_path,
                    cert.not_before,
                    cert.not_after,
                    cert.renew_at,
                    cert.failures,
                    cert.next_attempt,
                    cert.last_error,
                    cert.order_url,
                    time.time(),
                ),
            )
            self._touch("cert", cert.id)

    async def get_certificate(self, cert_id: str) -> Certificate | None:
        async with self._read():
            r = await self._one(f"SELECT {_CERT_COLS} FROM certificates WHERE id=?", (cert_id,))
        return _cert(r) if r else None

    async def list_certificates(self) -> list[Certificate]:
        async with self._read():
            rows = await self._all(f"SELECT {_CERT_COLS} FROM certificates ORDER BY id")
        return [_cert(r) for r in rows]

    async def delete_certificate(self, cert_id: str) -> None:
        async with self._write():
            cur = await self.db.execute("DELETE FROM certificates WHERE id=?", (cert_id,))
            if cur.rowcount:
                self._touch("cert", cert_id)

    # ------------------------------------------------------------------ meta
    async def get_meta(self, key: str) -> str | None:
        async with self._read():
            r = await self._one("SELECT value FROM meta WHERE key=?", (key,))
        return str(r[0]) if r else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write():
            cur = await self.db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                " SET value = excluded.value WHERE value != excluded.value",
                (key, value),
            )
            if cur.rowcount:
                self._touch("meta", key)
