"""SQLite implementation of the store (aiosqlite, WAL, synchronous=FULL).

The store's logic is ``webgateway.sqlstore`` (shared with PostgreSQL); this module is the
connection, the schema and the transactions.

One connection, one lock: SQLite serializes writers anyway, and the API's write rate is
tiny next to what the data plane reads from memory; writes arriving together share one
transaction (group commit, ``SqlStore._write``), which is what keeps a burst -- 200 custom
domains being issued at once -- from queueing one fsync'd transaction per row.
``synchronous=FULL`` makes a write durable before the API acknowledges it, so ``kill -9``
(or power loss) loses nothing that was answered 2xx. Other processes sharing the file see
changes by polling: every ``poll_interval`` a second connection, held in the event loop's
thread, asks SQLite's ``PRAGMA data_version`` (a look at the WAL index in shared memory, a
few microseconds); only when that moved is the serial row read through aiosqlite's thread
(a thread hop and a query: some 0.3 ms of CPU, 20 times a second, on every service that
follows the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from webgateway.sqlstore import SqlStore
from webgateway.store import StoreUnavailable

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
    # 4: certificates and their keys live in the store, so every gateway of a fleet serves
    # the same one (chain, key, and the key of the order in flight, sealed by keyseal);
    # leases make one gateway order each certificate; the ACME account key (secrets) and
    # the orders created per account (the CA's rate limit) are shared by the fleet.
    # cert_path/key_path remain only for rows written before: certd imports those files.
    """
    CREATE TABLE certificates4 (
        id TEXT PRIMARY KEY, domains TEXT NOT NULL, state TEXT NOT NULL,
        chain TEXT NOT NULL, key TEXT NOT NULL,
        not_before REAL NOT NULL, not_after REAL NOT NULL, renew_at REAL NOT NULL,
        failures INTEGER NOT NULL, next_attempt REAL NOT NULL, last_error TEXT NOT NULL,
        order_url TEXT NOT NULL, order_key TEXT NOT NULL, updated REAL NOT NULL,
        cert_path TEXT NOT NULL DEFAULT '', key_path TEXT NOT NULL DEFAULT '');
    INSERT INTO certificates4
        SELECT id, domains, state, '', '', not_before, not_after, renew_at, failures,
               next_attempt, last_error, order_url, '', updated, cert_path, key_path
        FROM certificates;
    DROP TABLE certificates;
    ALTER TABLE certificates4 RENAME TO certificates;
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE acme_orders (
        id INTEGER PRIMARY KEY, account TEXT NOT NULL, cert_id TEXT NOT NULL,
        created REAL NOT NULL);
    CREATE INDEX acme_orders_account ON acme_orders(account, created);
    """,
    # 5: the fleet: each gateway registers itself (its public addresses, listeners) and
    # heartbeats ``seen``; tunnel_presence says which gateways hold a live tunnel per name
    """
    CREATE TABLE gateways (
        id TEXT PRIMARY KEY, ipv4 TEXT NOT NULL, ipv6 TEXT NOT NULL, dns TEXT NOT NULL,
        https TEXT NOT NULL, api TEXT NOT NULL, started REAL NOT NULL, seen REAL NOT NULL);
    CREATE TABLE tunnel_presence (
        label TEXT NOT NULL, gateway TEXT NOT NULL, seen REAL NOT NULL,
        PRIMARY KEY (label, gateway));
    CREATE INDEX tunnel_presence_gateway ON tunnel_presence(gateway);
    """,
)


class SqliteStore(SqlStore):
    def __init__(self, path: Path, poll_interval: float = 0.05) -> None:
        super().__init__(poll_interval)
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        #: asks only ``PRAGMA data_version``; never reads a table, never writes
        self._watch: sqlite3.Connection | None = None

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
        self._watch = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
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

    def _commit_mark(self) -> int | None:
        """``PRAGMA data_version``: it moves whenever another connection (our aiosqlite one
        included) commits."""
        if self._watch is None:
            return None
        try:
            (version,) = self._watch.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(version)

    # ------------------------------------------------------------------ primitives
    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        await self._before(sql)
        async with self.db.execute(sql, tuple(args)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        await self._before(sql)
        async with self.db.execute(sql, tuple(args)) as cur:
            return list(await cur.fetchall())

    async def _exec(self, sql: str, args: Iterable[Any] = ()) -> int:
        await self._before(sql)
        async with self.db.execute(sql, tuple(args)) as cur:
            return int(cur.rowcount)

    async def _exec_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._before(sql)
        await self.db.executemany(sql, rows)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[None]:
        async with self._lock:
            if not write:
                await self._begin("BEGIN")
                try:
                    yield
                finally:
                    await self.db.execute("COMMIT")
                return
            try:
                await self._begin("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"the store cannot start a write: {e}") from None
            try:
                yield
                await self.db.execute("COMMIT")
            except sqlite3.Error as e:
                await self._rollback()
                raise StoreUnavailable(f"the store refused the write: {e}") from None
            except BaseException:
                await self._rollback()
                raise

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
