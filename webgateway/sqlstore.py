"""The store's logic written once over SQL, for the SQLite and the PostgreSQL backends.

Both backends keep the same tables, one serial bumped per write and the same ``changes``
feed; they differ only in how a statement runs, how a transaction starts and ends, and how
other processes are woken. So every ``Store`` method lives here, in SQL that both dialects
accept (``?`` placeholders, ``ON CONFLICT``, ``RETURNING``), row decoding and change-set
assembly included, and a backend supplies the primitives: ``_one``, ``_all``, ``_exec``,
``_exec_many``, ``_read``, ``_transaction`` and ``_published``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from webgateway.addresses import HostPort, parse_hostport, parse_ip
from webgateway.model import (
    Certificate,
    CertState,
    ChangeSet,
    Domain,
    DomainState,
    Gateway,
    Lease,
    Name,
    NameLoad,
    Owner,
    OwnerRemoval,
    OwnerSummary,
    Snapshot,
    TlsMode,
    TxtRecord,
)
from webgateway.store import (
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
)

#: Changes older than this many serials are pruned; a consumer that far behind reloads.
CHANGES_KEPT = 100_000

#: Names fetched and decoded between two yields to the event loop in a full snapshot.
DECODE_SLICE = 5_000

_TLS = {m.value: m for m in TlsMode}
#: Keys per ``IN (...)`` when the change feed reads what changed (under SQLite's 999 limit).
IN_CHUNK = 500
#: Most writes one transaction takes (group commit): bounds the wait of the group's first,
#: and keeps PostgreSQL within its cache of 64 subtransactions (savepoints) per transaction.
GROUP_MAX = 64


#: A grouped write's savepoint: not needed (first of its group), due before its first
#: change, taken.
_SAVEPOINT_NONE, _SAVEPOINT_DUE, _SAVEPOINT_TAKEN = 0, 1, 2


@dataclass(eq=False)
class _Member:
    """One write waiting for, or taking part in, a group transaction."""

    turn: asyncio.Future[bool]  # set by the committer: run now (True: first of the group)
    done: asyncio.Future[BaseException | None]  # set by the write: its statements ended
    committed: asyncio.Future[None]  # set by the committer: durable, or why not


class _Aborted(Exception):
    """A write of the group was cancelled where only rolling back the group undoes it."""


def _retrieved(fut: asyncio.Future[None]) -> None:
    """A write cancelled while its group commits never reads the outcome: that is fine."""
    if not fut.cancelled():
        fut.exception()


def _copy(err: BaseException) -> BaseException:
    """One exception object per waiting task (a traceback is not shared between tasks)."""
    if isinstance(err, StoreError):
        return type(err)(str(err))
    return err


@functools.lru_cache(maxsize=4096)
def _backends(raw: str) -> tuple[HostPort, ...]:
    """Backends column -> values; cached because many names share one backend list."""
    return tuple(parse_hostport(b) for b in json.loads(raw))


def decode_name(row: Any) -> Name:
    return Name(
        row[0], row[1], _backends(row[2]), _TLS[row[3]], bool(row[4]), bool(row[5]), row[6],
        row[7], bool(row[8]), row[9],
    )


def decode_domain(row: Any) -> Domain:
    return Domain(row[0], row[1], row[2], row[3], DomainState(row[4]), row[5], row[6], row[7])


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def decode_cert(row: Any) -> Certificate:
    return Certificate(
        id=row[0],
        domains=tuple(json.loads(row[1])),
        state=CertState(row[2]),
        chain=row[3],
        key=row[4],
        not_before=row[5],
        not_after=row[6],
        renew_at=row[7],
        failures=row[8],
        next_attempt=row[9],
        last_error=row[10],
        order_url=row[11],
        order_key=row[12],
        updated=row[13],
    )


def decode_gateway(row: Any) -> Gateway:
    return Gateway(
        row[0],
        tuple(parse_ip(a) for a in json.loads(row[1])),
        tuple(parse_ip(a) for a in json.loads(row[2])),
        tuple(parse_hostport(a) for a in json.loads(row[3])),
        tuple(parse_hostport(a) for a in json.loads(row[4])),
        row[5], row[6], row[7],
    )


def _gateway_row(gw: Gateway) -> tuple[Any, ...]:
    return (
        gw.id, json.dumps([str(a) for a in gw.ipv4]), json.dumps([str(a) for a in gw.ipv6]),
        json.dumps([str(a) for a in gw.dns]), json.dumps([str(a) for a in gw.https]),
        gw.api, gw.started, gw.seen,
    )


GATEWAY_COLS = "id, ipv4, ipv6, dns, https, api, started, seen"

NAME_COLS = (
    "label, owner_id, backends, tls, proxy_protocol, http2, created, updated, tunnel,"
    " tunnel_token_hash"
)
DOMAIN_COLS = "fqdn, label, owner_id, challenge_label, state, detail, created, updated"
#: SQL for "this claim holds its domain" (DomainState.holds) and "this claim is closed"
_HELD = "state IN ('verified', 'active')"
_CLOSED = "state IN ('dropped', 'expired')"
CERT_COLS = (
    "id, domains, state, chain, key, not_before, not_after, renew_at,"
    " failures, next_attempt, last_error, order_url, order_key, updated"
)


def upsert(table: str, cols: str, key: str) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every column: a replace both dialects run."""
    names = [c.strip() for c in cols.split(",")]
    sets = ", ".join(f"{c} = excluded.{c}" for c in names if c != key)
    marks = ", ".join("?" for _ in names)
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {sets}"


_NAME_UPSERT = upsert("names", NAME_COLS, "label")
_GATEWAY_UPSERT = upsert("gateways", GATEWAY_COLS, "id")
_CERT_UPSERT = upsert("certificates", CERT_COLS, "id")


class SqlStore:
    """Every ``Store`` method over the backend primitives below (see the module docstring)."""

    poll_interval: float
    #: The dialect's aggregate joining every label with one space (labels never hold one).
    _JOINED_LABELS = "group_concat(label, ' ')"

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.write_observer: Callable[[float], None] | None = None
        #: futures of waiters, done at the next commit of this process (``_notify``)
        self._wakers: set[asyncio.Future[None]] = set()
        self._notified = 0  # commits notified so far: a waiter sees one it would miss
        self._pending: list[tuple[str, str]] = []
        self._queue: collections.deque[_Member] = collections.deque()
        self._savepoint = _SAVEPOINT_NONE
        self._committer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ backend primitives
    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def _exec(self, sql: str, args: Iterable[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    async def _exec_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def _before(self, sql: str) -> None:
        """Every primitive calls this first: a grouped write's savepoint is taken right
        before its first statement that may change something."""
        if self._savepoint == _SAVEPOINT_DUE and sql.lstrip()[:6].upper() != "SELECT":
            self._savepoint = _SAVEPOINT_TAKEN
            await self._exec("SAVEPOINT grouped_write")

    def _read(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Exclusive use of the connection for single-statement reads (no transaction)."""
        raise NotImplementedError

    def _transaction(self, write: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """Exclusive use of the connection in one transaction: a consistent read, or a write
        serialized with every other writer of the store (committed, or rolled back on error)."""
        raise NotImplementedError

    async def _published(self, serial: int) -> None:
        """Inside the write's transaction, once ``serial`` is taken: wake other processes."""

    def _commit_mark(self) -> int | None:
        """A number, far cheaper to get than a read, that moves whenever a commit may have
        happened; a waiter reads the serial again only when it moved. None (the default):
        unknown, read at every poll."""
        return None

    #: SQL for the time leases are judged by when every client must share one clock (a
    #: fleet: the database's), in seconds since the epoch; None: the caller's ``now`` (SQLite
    #: is on the one machine whose clock every caller reads).
    lease_clock: str | None = None

    # ------------------------------------------------------------------ writes and the feed
    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[None]:
        """One write: its statements run in a transaction that bumps the serial once,
        recording every key touched via ``_touch``; it returns once that is committed.

        Writers that arrive while a transaction is open wait and then share the next one
        (group commit: one serial bump, one COMMIT and one fsync for many small writes).
        The first write of a group runs as a transaction of its own would; each later one
        inside a savepoint (taken before its first statement that is not a SELECT, and
        released by the COMMIT: no round trip for a write that only reads), so its own
        error (a Conflict, a cancellation) undoes only its statements. Nobody is told
        "done" before the COMMIT that made the write durable has returned; a COMMIT that
        fails fails every write of its group.
        """
        t0 = time.perf_counter()  # the wait for the connection is part of a write's time
        loop = asyncio.get_running_loop()
        m = _Member(loop.create_future(), loop.create_future(), loop.create_future())
        m.committed.add_done_callback(_retrieved)
        self._queue.append(m)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups(), name="store-commit")
        try:
            first = await m.turn
        except asyncio.CancelledError:
            if m in self._queue:
                self._queue.remove(m)
            elif m.turn.done() and not m.turn.cancelled() and not m.done.done():
                m.done.set_result(None)  # our turn came with the cancellation: nothing ran
            raise
        mark = len(self._pending)
        outcome: BaseException | None = None
        self._savepoint = _SAVEPOINT_NONE if first else _SAVEPOINT_DUE
        try:
            yield
        except BaseException as e:
            if first or not isinstance(e, StoreError | asyncio.CancelledError):
                outcome = e  # the group's transaction is rolled back
                if not isinstance(e, Exception):
                    m.committed.cancel()  # nobody waits for it
                    raise
            else:
                del self._pending[mark:]
                if self._savepoint == _SAVEPOINT_TAKEN:
                    try:
                        await self._exec("ROLLBACK TO SAVEPOINT grouped_write")
                    except BaseException as bad:
                        outcome = bad
                m.committed.cancel()
                raise
        finally:
            self._savepoint = _SAVEPOINT_NONE
            if not m.done.done():
                m.done.set_result(outcome)
        await asyncio.shield(m.committed)  # raises when the group was rolled back
        if self.write_observer is not None:
            self.write_observer(time.perf_counter() - t0)

    async def _commit_groups(self) -> None:
        """Runs while writes wait: one transaction per group, committed before anyone in
        it is answered. A group takes, in order, the writes waiting when it starts and
        those arriving while it runs, up to ``GROUP_MAX``."""
        group: list[_Member] = []
        try:
            while self._queue:
                group = []
                err: BaseException | None = None
                try:
                    async with self._transaction(write=True):
                        self._pending = []
                        while self._queue and len(group) < GROUP_MAX:
                            m = self._queue.popleft()
                            if m.turn.done():
                                continue  # cancelled while it waited
                            group.append(m)
                            m.turn.set_result(len(group) == 1)
                            failed = await m.done
                            if failed is not None:
                                raise failed if isinstance(failed, Exception) else _Aborted()
                        await self._bump()
                except _Aborted:
                    err = StoreUnavailable("a write of the same group was cancelled")
                except Exception as e:
                    err = e
                if err is not None and not group:  # no transaction: nobody could write
                    while self._queue:
                        m = self._queue.popleft()
                        if not m.turn.done():
                            m.turn.set_exception(_copy(err))
                for m in group:
                    if m.committed.done():
                        continue
                    if err is None:
                        m.committed.set_result(None)
                    else:
                        m.committed.set_exception(err if m.done.result() is err else _copy(err))
                if err is None and self._pending:
                    self._notify()
        except BaseException as e:  # this task cancelled: no write may wait forever
            gone = StoreUnavailable(f"the store stopped writing ({type(e).__name__})")
            for m in group:
                if not m.committed.done():
                    m.committed.set_exception(_copy(gone))
            for m in self._queue:
                if not m.turn.done():
                    m.turn.set_exception(_copy(gone))
            self._queue.clear()
            raise
        finally:
            self._committer = None

    async def _bump(self) -> None:
        """Inside a write transaction: one serial for every key touched, other processes woken."""
        if not self._pending:
            return
        (serial,) = await self._one(
            "UPDATE serial SET value = value + 1 WHERE id = 1 RETURNING value"
        )
        await self._exec_many(
            "INSERT INTO changes VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(serial, k, key) for k, key in dict.fromkeys(self._pending)],
        )
        if serial % 1000 == 0:
            await self._exec("DELETE FROM changes WHERE serial <= ?", (serial - CHANGES_KEPT,))
        await self._published(serial)

    def _touch(self, kind: str, key: str) -> None:
        self._pending.append((kind, key))

    def _notify(self) -> None:
        self._notified += 1
        wakers, self._wakers = self._wakers, set()
        for fut in wakers:
            if not fut.done():
                fut.set_result(None)

    async def serial(self) -> int:
        async with self._read():
            (value,) = await self._one("SELECT value FROM serial WHERE id = 1")
        return int(value)

    async def wait_changed(self, after: int, max_wait: float) -> int:
        loop = asyncio.get_running_loop()
        end = loop.time() + max_wait
        current: int | None = None
        mark: int | None = None
        while True:
            notified = self._notified
            seen = mark
            mark = self._commit_mark()  # taken before the read it may spare
            if current is None or mark is None or mark != seen:
                current = await self.serial()
            left = end - loop.time()
            if current > after or left <= 0:
                return current
            await self._nap(left, mark, notified)

    async def _nap(self, seconds: float, mark: int | None, notified: int) -> None:
        """Until a commit of this process, ``seconds`` pass, or another process may have
        committed: with a commit mark, a timer callback looks at it every ``poll_interval``
        and the waiting task wakes only once it moved (an idle gateway's poll costs one
        callback and one ``PRAGMA``, not a task's turn, a timeout and its exception);
        without one, after ``poll_interval``, for the caller to read the serial."""
        if self._notified != notified:
            return  # a commit came between the caller's read and now
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wakers.add(fut)
        end = loop.time() + (seconds if mark is not None else min(seconds, self.poll_interval))
        timer: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal timer
            left = end - loop.time()
            if fut.done():
                return
            if left <= 0.001 or (mark is not None and self._commit_mark() != mark):
                fut.set_result(None)
                return
            timer = loop.call_later(min(left, self.poll_interval), tick)

        timer = loop.call_later(min(end - loop.time(), self.poll_interval), tick)
        try:
            await fut
        finally:
            timer.cancel()  # the latest: tick replaces it
            self._wakers.discard(fut)

    async def snapshot(self, names_as: NameLoad = NameLoad.FULL) -> Snapshot:
        names: dict[str, Name] = {}
        labels: list[bytes] | None = None
        async with self._transaction(write=False):
            (serial,) = await self._one("SELECT value FROM serial WHERE id = 1")
            if names_as is NameLoad.FULL:
                # In slices by label, each fetched and decoded (about 6 µs a name) before
                # the next, yielding between them: the other services of the process (dnsd
                # answering) run meanwhile, and a million rows are never held at once.
                last = ""
                while True:
                    rows = await self._all(
                        f"SELECT {NAME_COLS} FROM names WHERE label > ? ORDER BY label"
                        f" LIMIT {DECODE_SLICE}", (last,))
                    for r in rows:
                        names[r[0]] = decode_name(r)
                    if len(rows) < DECODE_SLICE:
                        break
                    last = rows[-1][0]
                    await asyncio.sleep(0)
            elif names_as is NameLoad.LABELS:
                # One string from the database, split in C: about 0.3 s at a million names
                # where a row per label costs 1 s and twice the memory at its peak.
                (joined,) = await self._one(f"SELECT {self._JOINED_LABELS} FROM names")
                labels = joined.encode("ascii").split(b" ") if joined else []
            domains: dict[str, Domain] = {}
            claims: dict[str, Domain] = {}
            for r in await self._all(
                f"SELECT {DOMAIN_COLS} FROM domains WHERE state IN (?, ?, ?)",
                ("pending", "verified", "active"),
            ):
                d = decode_domain(r)
                if d.state.holds:
                    domains[d.fqdn] = d
                else:
                    claims[d.challenge_label] = d
            txt: dict[str, list[str]] = {}
            for fqdn, value in await self._all("SELECT fqdn, value FROM txt ORDER BY created"):
                txt.setdefault(fqdn, []).append(value)
            rows = await self._all(f"SELECT {CERT_COLS} FROM certificates")
            certs = {r[0]: decode_cert(r) for r in rows}
            meta = {k: v for k, v in await self._all("SELECT key, value FROM meta")}
            gateways, tunnels = await self._fleet()
        txts = {k: tuple(v) for k, v in txt.items()}
        return Snapshot(int(serial), names, domains, txts, certs, meta, claims, gateways,
                        tunnels, labels=labels)

    async def changes_since(self, serial: int) -> ChangeSet | None:
        async with self._transaction(write=False):
            (current,) = await self._one("SELECT value FROM serial WHERE id = 1")
            (oldest,) = await self._one("SELECT MIN(serial) FROM changes")
            if serial > current:
                return None  # the store was replaced; start over
            if serial < current and (oldest is None or oldest > serial + 1):
                return None
            rows = await self._all(
                "SELECT DISTINCT kind, key FROM changes WHERE serial > ?", (serial,)
            )
            keys: dict[str, list[str]] = {}
            for kind, key in rows:
                keys.setdefault(kind, []).append(key)

            async def fetch(kind: str, sql: str) -> list[Any]:
                """Rows of ``sql`` (ending in ``IN``) for every changed key of ``kind``."""
                out: list[Any] = []
                ks = keys.get(kind, [])
                for i in range(0, len(ks), IN_CHUNK):
                    part = ks[i:i + IN_CHUNK]
                    marks = ", ".join("?" * len(part))
                    out += await self._all(f"{sql} ({marks})", part)
                return out

            names: dict[str, Name | None] = dict.fromkeys(keys.get("name", ()))
            for r in await fetch("name", f"SELECT {NAME_COLS} FROM names WHERE label IN"):
                names[r[0]] = decode_name(r)
            domains: dict[str, Domain | None] = dict.fromkeys(keys.get("domain", ()))
            for r in await fetch(
                "domain", f"SELECT {DOMAIN_COLS} FROM domains WHERE {_HELD} AND fqdn IN"
            ):
                domains[r[0]] = decode_domain(r)
            claims: dict[str, Domain | None] = dict.fromkeys(keys.get("claim", ()))
            for r in await fetch(
                "claim",
                f"SELECT {DOMAIN_COLS} FROM domains WHERE state='pending' AND challenge_label IN",
            ):
                claims[r[3]] = decode_domain(r)
            values: dict[str, list[str]] = {k: [] for k in keys.get("txt", ())}
            for fqdn, value, _ in sorted(
                await fetch("txt", "SELECT fqdn, value, created FROM txt WHERE fqdn IN"),
                key=lambda r: r[2],
            ):
                values[fqdn].append(value)
            txt = {k: tuple(v) for k, v in values.items()}
            certs: dict[str, Certificate | None] = dict.fromkeys(keys.get("cert", ()))
            for r in await fetch("cert", f"SELECT {CERT_COLS} FROM certificates WHERE id IN"):
                certs[r[0]] = decode_cert(r)
            meta: dict[str, str | None] = dict.fromkeys(keys.get("meta", ()))
            for k, v in await fetch("meta", "SELECT key, value FROM meta WHERE key IN"):
                meta[k] = str(v)
            gateways: dict[str, Gateway | None] = dict.fromkeys(keys.get("gateway", ()))
            for r in await fetch("gateway", f"SELECT {GATEWAY_COLS} FROM gateways WHERE id IN"):
                gateways[r[0]] = decode_gateway(r)
            held: dict[str, set[str]] = {k: set() for k in keys.get("tunnel", ())}
            for label, gw in await fetch(
                "tunnel", "SELECT label, gateway FROM tunnel_presence WHERE label IN"
            ):
                held[label].add(gw)
            tunnels = {k: frozenset(v) for k, v in held.items()}
            return ChangeSet(int(current), names, domains, txt, certs, meta, claims, gateways,
                             tunnels)

    # ------------------------------------------------------------------ owners
    async def create_owner(self, name: str, token_hash: str) -> Owner:
        async with self._write():
            if await self._one("SELECT 1 FROM owners WHERE name=?", (name,)):
                raise Conflict(f"an owner named {name!r} exists already")
            (owner_id,) = await self._one(
                "INSERT INTO owners (name, token_hash, created) VALUES (?, ?, ?) RETURNING id",
                (name, token_hash, time.time()),
            )
            self._touch("owner", str(owner_id))
        return Owner(int(owner_id), name)

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
            await self._exec(
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
            await self._exec("DELETE FROM names WHERE owner_id=?", (owner_id,))
            await self._exec("DELETE FROM owners WHERE id=?", (owner_id,))
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
            # A tunnel name keeps its token unless a new hash is given; a plain one has none.
            token_hash = (name.tunnel_token_hash or (r[2] if r else "")) if name.tunnel else ""
            if r and r[0] != name.owner_id:
                raise Forbidden(f"{name.label!r} belongs to another owner")
            if not r:
                (count,) = await self._one(
                    "SELECT COUNT(*) FROM names WHERE owner_id=?", (name.owner_id,)
                )
                if count >= max_names:
                    raise QuotaExceeded(f"an owner may hold at most {max_names} names")
            await self._exec(
                _NAME_UPSERT,
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

    async def get_name(self, label: str) -> Name | None:
        async with self._read():
            r = await self._one(f"SELECT {NAME_COLS} FROM names WHERE label=?", (label,))
        return decode_name(r) if r else None

    async def list_names(self, owner_id: int | None = None) -> list[Name]:
        async with self._read():
            if owner_id is None:
                rows = await self._all(f"SELECT {NAME_COLS} FROM names ORDER BY label")
            else:
                rows = await self._all(
                    f"SELECT {NAME_COLS} FROM names WHERE owner_id=? ORDER BY label", (owner_id,)
                )
        return [decode_name(r) for r in rows]

    async def delete_name(self, label: str, owner_id: int) -> None:
        async with self._write():
            r = await self._one("SELECT owner_id FROM names WHERE label=?", (label,))
            if not r or r[0] != owner_id:
                raise NotFound(f"you have no name {label!r}")
            await self._delete_claims("label=?", (label,))
            await self._exec("DELETE FROM names WHERE label=?", (label,))
            self._touch("name", label)

    async def set_tunnel_token(self, label: str, owner_id: int, token_hash: str) -> None:
        async with self._write():
            r = await self._one("SELECT owner_id, tunnel FROM names WHERE label=?", (label,))
            if not r or r[0] != owner_id:
                raise NotFound(f"you have no name {label!r}")
            if not r[1]:
                raise Conflict(f"{label!r} is not a tunnel name; set \"tunnel\": true first")
            await self._exec(
                "UPDATE names SET tunnel_token_hash=?, updated=? WHERE label=?",
                (token_hash, time.time(), label),
            )
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
        await self._exec(f"DELETE FROM domains WHERE {where}", args)
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
                if await self._exec(
                    "UPDATE domains SET label=? WHERE challenge_label=? AND label!=?",
                    (domain.label, mine[0], domain.label),
                ):
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
            await self._exec(
                f"INSERT INTO domains ({DOMAIN_COLS}) VALUES (?,?,?,?,?,?,?,?)",
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
        sql = f"SELECT {DOMAIN_COLS} FROM domains WHERE fqdn=?"
        args: tuple[Any, ...] = (fqdn,)
        if owner_id is not None:
            sql, args = sql + " AND owner_id=?", (fqdn, owner_id)
        async with self._read():
            r = await self._one(sql + f" ORDER BY {_HELD} DESC, created DESC LIMIT 1", args)
        return decode_domain(r) if r else None

    async def list_domains(self, owner_id: int | None = None) -> list[Domain]:
        async with self._read():
            if owner_id is None:
                rows = await self._all(
                    f"SELECT {DOMAIN_COLS} FROM domains ORDER BY fqdn, created"
                )
            else:
                rows = await self._all(
                    f"SELECT {DOMAIN_COLS} FROM domains WHERE owner_id=? ORDER BY fqdn, created",
                    (owner_id,),
                )
        return [decode_domain(r) for r in rows]

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
            await self._exec(
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
                await self._exec(
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
            await self._exec(
                "INSERT INTO txt VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (fqdn, value, time.time()),
            )
            self._touch("txt", fqdn)

    async def remove_txt(self, fqdn: str, value: str | None = None) -> None:
        async with self._write():
            if value is None:
                removed = await self._exec("DELETE FROM txt WHERE fqdn=?", (fqdn,))
            else:
                removed = await self._exec(
                    "DELETE FROM txt WHERE fqdn=? AND value=?", (fqdn, value)
                )
            if removed:
                self._touch("txt", fqdn)

    async def list_txt(self) -> list[TxtRecord]:
        async with self._read():
            rows = await self._all("SELECT fqdn, value, created FROM txt ORDER BY fqdn, created")
        return [TxtRecord(*r) for r in rows]

    # ------------------------------------------------------------------ certificates
    async def put_certificate(
        self, cert: Certificate, lease: tuple[str, str] | None = None
    ) -> bool:
        """Write ``cert``'s row; with ``lease`` (name, holder) only while that holder holds
        it, checked in the write's transaction (a fence: a holder that stalled past its
        lease must not overwrite the new holder's row). False when nothing was written."""
        async with self._write():
            if lease is not None:
                r = await self._one("SELECT holder FROM leases WHERE name=?", (lease[0],))
                if r is None or r[0] != lease[1]:
                    return False
            await self._exec(
                _CERT_UPSERT,
                (
                    cert.id,
                    json.dumps(list(cert.domains)),
                    str(cert.state),
                    cert.chain,
                    cert.key,
                    cert.not_before,
                    cert.not_after,
                    cert.renew_at,
                    cert.failures,
                    cert.next_attempt,
                    cert.last_error,
                    cert.order_url,
                    cert.order_key,
                    time.time(),
                ),
            )
            self._touch("cert", cert.id)
        return True

    async def get_certificate(self, cert_id: str) -> Certificate | None:
        async with self._read():
            r = await self._one(f"SELECT {CERT_COLS} FROM certificates WHERE id=?", (cert_id,))
        return decode_cert(r) if r else None

    async def list_certificates(self) -> list[Certificate]:
        async with self._read():
            rows = await self._all(f"SELECT {CERT_COLS} FROM certificates ORDER BY id")
        return [decode_cert(r) for r in rows]

    async def delete_certificate(self, cert_id: str) -> None:
        async with self._write():
            if await self._exec("DELETE FROM certificates WHERE id=?", (cert_id,)):
                self._touch("cert", cert_id)

    # ------------------------------------------------------------------ meta
    async def get_meta(self, key: str) -> str | None:
        async with self._read():
            r = await self._one("SELECT value FROM meta WHERE key=?", (key,))
        return str(r[0]) if r else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write():
            await self._upsert_meta(key, value)

    async def swap_meta(self, key: str, old: str | None, new: str) -> bool:
        async with self._write():
            r = await self._one("SELECT value FROM meta WHERE key=?", (key,))
            if (str(r[0]) if r else None) != old:
                return False
            await self._upsert_meta(key, new)
            return True

    async def _upsert_meta(self, key: str, value: str) -> None:
        if await self._exec(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
            " SET value = excluded.value WHERE meta.value != excluded.value",
            (key, value),
        ):
            self._touch("meta", key)

    async def set_renew_at(self, cert_id: str, chain: str, renew_at: float) -> bool:
        """Move the renewal of the certificate whose chain is ``chain`` (ARI advice); False
        when the row has another chain now (a gateway renewed it meanwhile)."""
        async with self._write():
            if not await self._exec(
                "UPDATE certificates SET renew_at=?, updated=? WHERE id=? AND chain=?"
                " AND state='valid' AND renew_at != ?",
                (renew_at, time.time(), cert_id, chain, renew_at),
            ):
                return False
            self._touch("cert", cert_id)
        return True

    async def legacy_certificate_files(self) -> dict[str, tuple[str, str]]:
        """(chain file, key file) of rows written before schema 4 and not imported yet."""
        async with self._read():
            rows = await self._all(
                "SELECT id, cert_path, key_path FROM certificates"
                " WHERE chain = '' AND cert_path != '' AND key_path != ''"
            )
        return {r[0]: (r[1], r[2]) for r in rows}

    async def import_certificate(
        self, cert_id: str, chain: str, key: str, chain_file: str
    ) -> bool:
        """Fill in the chain and key read from ``chain_file`` (and its key file), which the
        row names, only while the row has no chain: in a rolling upgrade another gateway
        may have installed a newer one since the files were listed. False: nothing written."""
        async with self._write():
            if not await self._exec(
                "UPDATE certificates SET chain=?, key=?, updated=? WHERE id=? AND chain=''"
                " AND cert_path=?",
                (chain, key, time.time(), cert_id, chain_file),
            ):
                return False
            self._touch("cert", cert_id)
        return True

    # ------------------------------------------------------------------ leases (fleet-wide)
    # Not part of the change feed: taking, renewing or releasing a lease bumps no serial
    # (the SOA serial must not move with every heartbeat). On PostgreSQL each call runs in
    # a write transaction, serialized with every writer of the fleet.
    async def take_lease(self, name: str, holder: str, ttl: float, now: float) -> Lease:
        """Hold ``name`` for ``ttl`` seconds if it is free, expired or already ``holder``'s
        (a heartbeat); the lease as it stands after the call (compare its holder), its end
        in the caller's clock ``now``. Whether it is expired is judged by ``lease_clock``,
        so gateways whose clocks disagree still agree on who holds it."""
        async with self._write():
            t = now
            if self.lease_clock is not None:
                t = float((await self._one(f"SELECT {self.lease_clock}"))[0])
            await self._exec(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, expires = excluded.expires"
                " WHERE leases.holder = excluded.holder OR leases.expires <= ?",
                (name, holder, t + ttl, t),
            )
            r = await self._one("SELECT holder, expires FROM leases WHERE name=?", (name,))
        return Lease(name, r[0], now + (float(r[1]) - t))

    async def release_lease(self, name: str, holder: str) -> None:
        """Give ``name`` up at once (no-op unless ``holder`` holds it)."""
        async with self._write():
            await self._exec("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))

    async def release_leases(self, holder_prefix: str) -> int:
        """Give up every lease whose holder starts with ``holder_prefix``: those of an
        earlier process of this gateway, which is gone (one certd runs per gateway)."""
        async with self._write():
            return await self._exec(
                "DELETE FROM leases WHERE substr(holder, 1, ?) = ?",
                (len(holder_prefix), holder_prefix),
            )

    # ------------------------------------------------------------------ shared secrets
    async def get_secret(self, name: str) -> str | None:
        async with self._read():
            r = await self._one("SELECT value FROM secrets WHERE name=?", (name,))
        return str(r[0]) if r else None

    async def delete_secret(self, name: str) -> None:
        async with self._write():
            await self._exec("DELETE FROM secrets WHERE name=?", (name,))

    async def put_secret_once(self, name: str, value: str) -> str:
        """Store ``value`` unless ``name`` has one already; the value stored, so gateways
        creating the same secret at once all end up with the first one."""
        async with self._write():
            await self._exec(
                "INSERT INTO secrets VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, value)
            )
            (stored,) = await self._one("SELECT value FROM secrets WHERE name=?", (name,))
        return str(stored)

    # ------------------------------------------------------------------ ACME order budget
    async def take_order_slot(
        self, account: str, cert_id: str, now: float, window: float, limit: int
    ) -> float:
        """Count one new order of ``account`` if fewer than ``limit`` were created in the
        last ``window`` seconds, fleet-wide: 0.0; else when the oldest leaves the window."""
        since = now - window
        async with self._write():
            await self._exec("DELETE FROM acme_orders WHERE created <= ?", (since,))
            (count,) = await self._one(
                "SELECT COUNT(*) FROM acme_orders WHERE account=? AND created > ?",
                (account, since),
            )
            if count >= limit:
                (oldest,) = await self._one(
                    "SELECT MIN(created) FROM acme_orders WHERE account=? AND created > ?",
                    (account, since),
                )
                return float(oldest) + window
            await self._exec(
                "INSERT INTO acme_orders (account, cert_id, created) VALUES (?, ?, ?)",
                (account, cert_id, now),
            )
        return 0.0

    async def give_back_order_slot(self, account: str, cert_id: str, taken: float) -> None:
        """Uncount the slot ``take_order_slot(account, cert_id, taken, ...)`` counted: the
        CA created no order with it."""
        async with self._write():
            await self._exec(
                "DELETE FROM acme_orders WHERE id IN (SELECT id FROM acme_orders"
                " WHERE account=? AND cert_id=? AND created=? LIMIT 1)",
                (account, cert_id, taken),
            )

    # ------------------------------------------------------------------ the fleet
    async def _fleet(self) -> tuple[dict[str, Gateway], dict[str, frozenset[str]]]:
        rows = await self._all(f"SELECT {GATEWAY_COLS} FROM gateways")
        gateways = {r[0]: decode_gateway(r) for r in rows}
        held: dict[str, set[str]] = {}
        for label, gw in await self._all("SELECT label, gateway FROM tunnel_presence"):
            held.setdefault(label, set()).add(gw)
        return gateways, {k: frozenset(v) for k, v in held.items()}

    async def register_gateway(self, gateway: Gateway, stale_after: float) -> list[str]:
        """Insert or refresh ``gateway``'s row, and drop the gateways (with their tunnel
        presence) silent for ``stale_after`` s by its clock, so a gateway killed without a
        goodbye stops being answered in that time; every live gateway does this, in one
        write per heartbeat. A refresh (same addresses, a new ``seen``) bumps no serial, so
        the fleet's SOA does not move every few seconds. Returns the ids dropped (to log)."""
        row = _gateway_row(gateway)
        cutoff = gateway.seen - stale_after
        async with self._write():
            old = await self._one(f"SELECT {GATEWAY_COLS} FROM gateways WHERE id=?",
                                  (gateway.id,))
            await self._exec(_GATEWAY_UPSERT, row)
            if old is None or tuple(old)[:6] != row[:6]:
                self._touch("gateway", gateway.id)
            gone = [g for (g,) in await self._all(
                "DELETE FROM gateways WHERE seen < ? RETURNING id", (cutoff,))]
            for gid in gone:
                self._touch("gateway", gid)
            await self._drop_presence(
                "seen < ? OR gateway NOT IN (SELECT id FROM gateways)", (cutoff,))
        return gone

    async def remove_gateway(self, gateway_id: str) -> None:
        """A gateway leaves (a clean stop): its row and every tunnel it held, at once."""
        async with self._write():
            await self._drop_presence("gateway=?", (gateway_id,))
            if await self._exec("DELETE FROM gateways WHERE id=?", (gateway_id,)):
                self._touch("gateway", gateway_id)

    async def sync_tunnels(self, gateway_id: str, held: Collection[str], now: float) -> None:
        """Make ``gateway_id``'s presence rows exactly ``held`` (the labels it has a live
        tunnel for) and heartbeat them; only the labels that came or went touch the feed,
        so a retry, or the periodic call, costs no serial."""
        want = set(held)
        async with self._write():
            rows = await self._all(
                "SELECT label FROM tunnel_presence WHERE gateway=?", (gateway_id,))
            have = {r[0] for r in rows}
            gone, new = sorted(have - want), sorted(want - have)
            if gone:
                await self._exec_many(
                    "DELETE FROM tunnel_presence WHERE label=? AND gateway=?",
                    [(label, gateway_id) for label in gone])
            if new:
                await self._exec_many(
                    "INSERT INTO tunnel_presence VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    [(label, gateway_id, now) for label in new])
            await self._exec("UPDATE tunnel_presence SET seen=? WHERE gateway=?",
                             (now, gateway_id))
            for label in (*gone, *new):
                self._touch("tunnel", label)

    async def _drop_presence(self, where: str, args: tuple[Any, ...]) -> None:
        for (label,) in await self._all(
            f"DELETE FROM tunnel_presence WHERE {where} RETURNING label", args
        ):
            self._touch("tunnel", label)

    async def list_gateways(self) -> list[Gateway]:
        async with self._read():
            rows = await self._all(f"SELECT {GATEWAY_COLS} FROM gateways ORDER BY id")
        return [decode_gateway(r) for r in rows]

    async def list_tunnels(self) -> dict[str, frozenset[str]]:
        """Tunnel name -> the gateways holding a live tunnel for it."""
        async with self._transaction(write=False):
            return (await self._fleet())[1]
