"""The store on both backends (SQLite on a temp file, PostgreSQL in a throw-away server):
ownership, quotas, the serial and the change feed behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support import store_rows
from webgateway import sqlstore
from webgateway.addresses import parse_hostport
from webgateway.config import StoreConfig
from webgateway.feed import Follower
from webgateway.model import (
    Certificate,
    CertState,
    ChangeSet,
    Domain,
    DomainState,
    Name,
    NameLoad,
    Snapshot,
    TlsMode,
)
from webgateway.pg_store import MIGRATIONS as PG_MIGRATIONS
from webgateway.pg_store import PgStore
from webgateway.sqlite_store import MIGRATIONS, SqliteStore
from webgateway.store import (
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    Store,
    StoreUnavailable,
)
from webgateway.storefactory import open_store

BE = (parse_hostport("[fd00::5]:8080"),)


@pytest.fixture
def store_config(store_section: dict[str, Any], tmp_path: Path) -> StoreConfig:
    """Where a store lives, on each backend: the tests below open it through the factory."""
    return StoreConfig(**{"path": tmp_path / "db" / "wg.db", **store_section,
                          "poll_interval": 0.01})


@pytest.fixture
async def store(store_config: StoreConfig) -> AsyncIterator[Store]:
    s = await open_store(store_config)
    yield s
    await s.close()


async def test_file_is_private_and_schema_versioned(store: Store) -> None:
    if isinstance(store, PgStore):
        assert await store.schema_version() == len(PG_MIGRATIONS)
        return
    assert isinstance(store, SqliteStore)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    async with store.db.execute("PRAGMA user_version") as cur:
        assert (await cur.fetchone()) == (len(MIGRATIONS),)
    async with store.db.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone()) == ("wal",)


async def test_reopen_keeps_data_and_does_not_remigrate(store_config: StoreConfig) -> None:
    s = await open_store(store_config)
    owner = await s.create_owner("alice", "h1")
    await s.put_name(Name("alice", owner.id, BE), 10)
    serial = await s.serial()
    await s.close()
    s2 = await open_store(store_config)
    assert await s2.serial() == serial
    assert (await s2.get_name("alice")) is not None
    await s2.close()


async def test_ownership_and_quota(store: Store) -> None:
    a = await store.create_owner("a", "ha")
    b = await store.create_owner("b", "hb")
    with pytest.raises(Conflict):
        await store.create_owner("a", "hx")
    assert await store.owner_by_token_hash("hb") == b
    assert await store.owner_by_token_hash("nope") is None

    assert await store.put_name(Name("x", a.id, BE), 2) is True
    assert await store.put_name(Name("x", a.id, BE, TlsMode.PASSTHROUGH), 2) is False
    got = await store.get_name("x")
    assert got is not None and got.tls == TlsMode.PASSTHROUGH and got.backends == BE
    with pytest.raises(Forbidden):
        await store.put_name(Name("x", b.id, BE), 2)
    with pytest.raises(NotFound):
        await store.delete_name("x", b.id)
    await store.put_name(Name("y", a.id, BE), 2)
    with pytest.raises(QuotaExceeded):
        await store.put_name(Name("z", a.id, BE), 2)
    assert [n.label for n in await store.list_names(a.id)] == ["x", "y"]
    assert await store.list_names(b.id) == []


async def test_domains_follow_their_name(store: Store) -> None:
    a = await store.create_owner("a", "ha")
    b = await store.create_owner("b", "hb")
    await store.put_name(Name("x", a.id, BE), 5)
    with pytest.raises(NotFound):
        await store.put_domain(Domain("shop.example.org", "x", b.id, "cb"), 5)
    assert await store.put_domain(Domain("shop.example.org", "x", a.id, "ca"), 5) is True
    assert await store.put_domain(Domain("shop.example.org", "x", a.id, "cz"), 5) is False
    assert (await store.get_domain("shop.example.org", a.id)).challenge_label == "ca"  # type: ignore[union-attr]
    assert await store.verify_claim("ca", "CNAMEs found")
    await store.set_domain_state("shop.example.org", DomainState.ACTIVE, "cert in place")
    got = await store.get_domain("shop.example.org")
    assert got is not None and got.state == DomainState.ACTIVE and got.detail == "cert in place"
    with pytest.raises(ValueError):
        await store.set_domain_state("shop.example.org", DomainState.PENDING, "no")
    await store.delete_name("x", a.id)
    assert await store.get_domain("shop.example.org") is None
    assert (await store.snapshot()).domains == {}


async def _owners_with_names(store: Store, n: int) -> list[int]:
    ids = []
    for i in range(n):
        o = await store.create_owner(f"o{i}", f"h{i}")
        await store.put_name(Name(f"n{i}", o.id, BE), 5)
        ids.append(o.id)
    return ids


async def test_pending_claims_of_two_owners_coexist(store: Store) -> None:
    a, b = await _owners_with_names(store, 2)
    fqdn = "shop.example.org"
    assert await store.put_domain(Domain(fqdn, "n0", a, "ca"), 5) is True
    # the squatter's pending claim blocks nothing: the second owner claims too
    assert await store.put_domain(Domain(fqdn, "n1", b, "cb"), 5) is True
    mine, theirs = await store.get_domain(fqdn, a), await store.get_domain(fqdn, b)
    assert mine is not None and theirs is not None
    assert (mine.challenge_label, theirs.challenge_label) == ("ca", "cb")
    assert mine.state == theirs.state == DomainState.PENDING
    assert {d.owner_id for d in await store.list_domains()} == {a, b}
    assert [d.owner_id for d in await store.list_domains(b)] == [b]
    snap = await store.snapshot()
    assert snap.domains == {}  # nothing is served or routed before a proof
    assert set(snap.claims) == {"ca", "cb"}


async def test_verification_drops_the_other_claims_with_a_reason(store: Store) -> None:
    a, b, c = await _owners_with_names(store, 3)
    fqdn = "shop.example.org"
    await store.put_domain(Domain(fqdn, "n0", a, "ca"), 5)
    await store.put_domain(Domain(fqdn, "n1", b, "cb"), 5)
    await store.put_domain(Domain("other.example.org", "n0", a, "co"), 5)
    before = await store.serial()
    assert await store.verify_claim("cb", "CNAMEs in place") is True
    assert await store.verify_claim("ca", "late") is False  # no longer pending
    winner, loser = await store.get_domain(fqdn, b), await store.get_domain(fqdn, a)
    assert winner is not None and winner.state == DomainState.VERIFIED
    assert loser is not None and loser.state == DomainState.DROPPED
    assert "another owner proved control" in loser.detail and "UTC" in loser.detail
    assert f"_acme-challenge.{fqdn} CNAME" in loser.detail
    assert (await store.get_domain(fqdn)) == winner  # the admin's view: the holder
    # the feed: the domain now has a holder, neither claim is pending any more
    cs = await store.changes_since(before)
    assert cs is not None and cs.domains == {fqdn: winner}
    assert cs.claims == {"ca": None, "cb": None}
    snap = await store.snapshot()
    assert snap.domains == {fqdn: winner} and set(snap.claims) == {"co"}
    # a held domain cannot be claimed by anyone else: 409 says what proves ownership
    for owner, label in ((c, "n2"), (a, "n0")):
        with pytest.raises(Conflict, match=f"_acme-challenge.{fqdn} pointed at"):
            await store.put_domain(Domain(fqdn, label, owner, "cx"), 5)
    # the holder releases it; the dropped owner claims again with a fresh target
    await store.delete_domain(fqdn, b)
    assert await store.put_domain(Domain(fqdn, "n0", a, "ca2"), 5) is True
    again = await store.get_domain(fqdn, a)
    assert again is not None and again.state == DomainState.PENDING
    assert again.challenge_label == "ca2" and again.detail == ""


async def test_operator_removes_every_claim_of_a_domain(store: Store) -> None:
    a, b = await _owners_with_names(store, 2)
    await store.put_domain(Domain("shop.example.org", "n0", a, "ca"), 5)
    await store.put_domain(Domain("shop.example.org", "n1", b, "cb"), 5)
    with pytest.raises(NotFound):
        await store.delete_domain("shop.example.org", 999)
    await store.delete_domain("shop.example.org", None)
    assert await store.list_domains() == []
    with pytest.raises(NotFound):
        await store.delete_domain("shop.example.org", None)


async def test_pending_claims_expire_and_closed_ones_are_purged(store: Store) -> None:
    a, b = await _owners_with_names(store, 2)
    ttl = 3600.0
    await store.put_domain(Domain("old.example.org", "n0", a, "c-old"), 2)
    await store.put_domain(Domain("held.example.org", "n0", a, "c-held"), 2)
    await store.verify_claim("c-held", "ok")
    await store.set_claim_detail("c-old", "waiting for DNS: no CNAME")
    with pytest.raises(QuotaExceeded):
        await store.put_domain(Domain("third.example.org", "n0", a, "c3"), 2)
    t0 = time.time()
    assert await store.expire_claims(t0 + ttl / 2, ttl) == 0  # not yet
    before = await store.serial()
    assert await store.expire_claims(t0 + ttl + 1, ttl) == 1
    old = await store.get_domain("old.example.org", a)
    assert old is not None and old.state == DomainState.EXPIRED
    assert old.detail.startswith("expired on ") and "was not seen in time" in old.detail
    assert "last check: waiting for DNS: no CNAME" in old.detail
    assert old.updated == t0 + ttl + 1
    cs = await store.changes_since(before)
    assert cs is not None and cs.claims == {"c-old": None}
    held = await store.get_domain("held.example.org", a)
    assert held is not None and held.state == DomainState.VERIFIED  # holders never expire
    # an expired claim holds nothing: it no longer counts against the quota
    assert await store.put_domain(Domain("third.example.org", "n0", a, "c3"), 2) is True
    # and it is kept one more TTL for its owner to read, then purged
    await store.delete_domain("third.example.org", a)
    assert await store.expire_claims(t0 + 2 * ttl, ttl) == 0
    assert await store.expire_claims(t0 + 2 * ttl + 2, ttl) == 1
    assert await store.get_domain("old.example.org", a) is None
    assert [d.fqdn for d in await store.list_domains()] == ["held.example.org"]
    del b


async def test_migration_keeps_existing_domains_and_their_challenge_labels(
        tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    con.executescript("""
        INSERT INTO owners VALUES (1, 'alice', 'h1', 0);
        INSERT INTO owners VALUES (2, 'bob', 'h2', 0);
        INSERT INTO names VALUES ('shop', 1, '[]', 'terminate', 0, 0, 0, 0);
        INSERT INTO domains VALUES ('shop.example.org', 'shop', 1, 'd0123456789abcdef01234567',
                                    'active', 'certificate valid', 5);
        INSERT INTO domains VALUES ('new.example.org', 'shop', 2, 'd76543210fedcba9876543210',
                                    'pending', '', 6);
    """)
    con.close()
    s = SqliteStore(db)
    await s.open()
    try:
        snap = await s.snapshot()
        held = snap.domains["shop.example.org"]
        assert held.challenge_label == "d0123456789abcdef01234567"
        assert held.state == DomainState.ACTIVE and held.created == held.updated == 5
        assert list(snap.claims) == ["d76543210fedcba9876543210"]
        # the partial unique index: a second holder for one domain is impossible
        await s.db.execute("UPDATE domains SET fqdn='shop.example.org'"
                           " WHERE fqdn='new.example.org'")  # a second (pending) claim: fine
        with pytest.raises(sqlite3.IntegrityError):
            await s.db.execute("UPDATE domains SET state='verified' WHERE owner_id=2")
    finally:
        await s.close()


async def test_owner_rotate_and_removal_take_everything_in_one_change(
    store: Store,
) -> None:
    a = await store.create_owner("a", "ha")
    b = await store.create_owner("b", "hb")
    for label in ("x", "y"):
        await store.put_name(Name(label, a.id, BE), 5)
    await store.put_name(Name("keep", b.id, BE), 5)
    await store.put_domain(Domain("shop.example.org", "x", a.id, "dabc"), 5)
    summary = {o.name: (o.names, o.domains) for o in await store.list_owners()}
    assert summary == {"a": (2, 1), "b": (1, 0)}

    rotated = await store.set_owner_token("a", "ha2")
    assert rotated == a
    assert await store.owner_by_token_hash("ha") is None
    assert await store.owner_by_token_hash("ha2") == a
    with pytest.raises(NotFound):
        await store.set_owner_token("nobody", "hz")

    before = await store.serial()
    removed = await store.delete_owner("a")
    assert removed.names == ("x", "y") and removed.domains == ("shop.example.org",)
    assert await store.serial() == before + 1  # one transaction, one serial
    cs = await store.changes_since(before)
    assert cs is not None
    assert cs.names == {"x": None, "y": None}
    assert cs.domains == {"shop.example.org": None}
    assert await store.owner_by_token_hash("ha2") is None
    assert [n.label for n in await store.list_names()] == ["keep"]
    assert [o.name for o in await store.list_owners()] == ["b"]
    with pytest.raises(NotFound):
        await store.delete_owner("a")


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.changes: list[ChangeSet] = []

    def load(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def apply(self, changes: ChangeSet) -> None:
        self.changes.append(changes)


async def test_every_write_bumps_the_serial_and_feeds_followers(store: Store) -> None:
    view = Recorder()
    follower = Follower(store, view, max_wait=0.5)
    await follower.load()
    task = asyncio.create_task(follower.run())
    try:
        s0 = follower.serial
        a = await store.create_owner("a", "ha")
        await store.put_name(Name("x", a.id, BE), 5)
        await store.add_txt("_acme-challenge.gw.test", "v1")
        await store.add_txt("_acme-challenge.gw.test", "v2")
        cert = Certificate("zone", ("gw.test", "*.gw.test"), CertState.VALID, "CHAIN",
                           "plain:KEY", order_key="plain:ORDER")
        await store.put_certificate(cert)
        final = await store.serial()
        assert final == s0 + 5
        async with asyncio.timeout(5):
            while follower.serial < final:
                await follower.applied.wait()
        merged_names = {k: v for c in view.changes for k, v in c.names.items()}
        merged_txt = {k: v for c in view.changes for k, v in c.txt.items()}
        assert merged_names["x"] is not None and merged_names["x"].backends == BE
        assert merged_txt["_acme-challenge.gw.test"] == ("v1", "v2")
        assert view.changes[-1].certificates["zone"] == (await store.get_certificate("zone"))

        await store.remove_txt("_acme-challenge.gw.test", "v1")
        await store.delete_name("x", a.id)
        target = await store.serial()
        async with asyncio.timeout(5):
            while follower.serial < target:
                await follower.applied.wait()
        merged_names = {k: v for c in view.changes for k, v in c.names.items()}
        merged_txt = {k: v for c in view.changes for k, v in c.txt.items()}
        assert merged_names["x"] is None
        assert merged_txt["_acme-challenge.gw.test"] == ("v2",)
    finally:
        task.cancel()


async def test_noop_writes_do_not_bump(store: Store) -> None:
    s0 = await store.serial()
    await store.remove_txt("nothing.gw.test")
    await store.delete_certificate("none")
    assert await store.serial() == s0


async def test_snapshot_and_stale_changes(store: Store) -> None:
    a = await store.create_owner("a", "ha")
    await store.put_name(Name("x", a.id, BE), 5)
    snap = await store.snapshot()
    assert set(snap.names) == {"x"} and snap.serial == await store.serial()
    assert await store.changes_since(snap.serial + 100) is None
    await store_rows(store, "DELETE FROM changes")
    assert await store.changes_since(1) is None
    cs = await store.changes_since(snap.serial)
    assert cs is not None and cs.empty


async def test_snapshot_carries_what_of_the_names_was_asked(store: Store) -> None:
    a = await store.create_owner("a", "ha")
    for label in ("x", "y-1", "z9"):
        await store.put_name(Name(label, a.id, BE), 5)
    await store.add_txt("_acme-challenge.gw.test", "v")
    await store.put_certificate(Certificate("zone", ("gw.test",), CertState.VALID, "/c", "/k"))
    full = await store.snapshot()
    assert set(full.names) == {"x", "y-1", "z9"} and full.labels is None
    labels = await store.snapshot(NameLoad.LABELS)
    assert labels.names == {} and labels.labels is not None
    assert sorted(labels.labels) == [b"x", b"y-1", b"z9"]
    none = await store.snapshot(NameLoad.NONE)
    assert none.names == {} and none.labels is None
    for snap in (labels, none):  # everything but the names is whole in every scope
        assert (snap.serial, snap.txt, snap.certificates, snap.domains) == (
            full.serial, full.txt, full.certificates, full.domains)
    assert full.label_set() == labels.label_set() == {b"x", b"y-1", b"z9"}
    mine = labels.label_set()
    mine.add(b"new")  # the caller's own set
    assert sorted(labels.labels) == [b"x", b"y-1", b"z9"]
    for label in ("x", "y-1", "z9"):
        await store.delete_name(label, a.id)
    empty = await store.snapshot(NameLoad.LABELS)
    assert empty.labels == [] and empty.label_set() == set()


async def test_a_full_snapshot_lets_the_loop_run_while_it_decodes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dnsd shares the process with the proxy, whose load decodes every name: a million
    take seconds, and DNS must keep answering meanwhile."""
    a = await store.create_owner("a", "ha")
    for i in range(6):
        await store.put_name(Name(f"n{i}", a.id, BE), 10)
    ticks = 0
    seen: list[int] = []

    def decode(row: Any) -> Name:
        seen.append(ticks)
        return real(row)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    real = sqlstore.decode_name
    monkeypatch.setattr(sqlstore, "decode_name", decode)
    monkeypatch.setattr(sqlstore, "DECODE_SLICE", 2)
    task = asyncio.create_task(ticker())
    try:
        snap = await store.snapshot()
    finally:
        task.cancel()
    assert len(snap.names) == 6 and len(seen) == 6
    assert seen[0] == seen[1] < seen[2] == seen[3] < seen[4] == seen[5]


async def test_a_waiter_cancelled_as_a_change_wakes_it_is_cancelled(store: Store) -> None:
    """A service stopping cancels its follower; a change landing in the same loop turn
    must not eat the cancel (Python 3.11's wait_for did: the follower ran on for ever)."""
    assert isinstance(store, sqlstore.SqlStore)
    store.poll_interval = 5.0  # the waiter sits on the change event, not on a poll
    for _ in range(3):
        task = asyncio.create_task(store.wait_changed(await store.serial() + 100, 5.0))
        await asyncio.sleep(0.1)
        store._notify()  # what a committed write does
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_a_labels_follower_reloads_labels_and_gets_changes_whole(store: Store) -> None:
    view = Recorder()
    follower = Follower(store, view, max_wait=0.05, names_as=NameLoad.LABELS)
    a = await store.create_owner("a", "ha")
    await store.put_name(Name("x", a.id, BE), 5)
    await follower.load()
    assert view.snapshots[-1].labels == [b"x"] and view.snapshots[-1].names == {}
    await store.put_name(Name("y", a.id, BE), 5)
    await follower.step()
    changed = view.changes[-1].names["y"]
    assert changed is not None and changed.backends == BE  # a change set's names are whole
    await store_rows(store, "DELETE FROM changes")  # too old to follow: reload, labels again
    await store.put_name(Name("z", a.id, BE), 5)
    await store_rows(store, "DELETE FROM changes")
    await follower.step()
    assert len(view.snapshots) == 2 and view.snapshots[-1].label_set() == {b"x", b"y", b"z"}


async def test_second_process_sees_changes_by_polling(store_config: StoreConfig) -> None:
    writer = await open_store(replace(store_config, poll_interval=0.05))
    reader = await open_store(store_config)
    try:
        s0 = await reader.serial()
        waiter = asyncio.create_task(reader.wait_changed(s0, 5))
        await asyncio.sleep(0.05)
        await writer.add_txt("a.gw.test", "v")
        async with asyncio.timeout(5):
            assert await waiter > s0
    finally:
        await writer.close()
        await reader.close()


async def test_sqlite_poll_reads_the_serial_only_after_a_commit(
        store_config: StoreConfig) -> None:
    """Polling asks ``PRAGMA data_version``; the serial row is read once per wait, and again
    only after another connection committed."""
    if store_config.url:
        pytest.skip("SQLite's change detection")
    writer = await open_store(store_config)
    reader = await open_store(store_config)
    assert isinstance(reader, SqliteStore)
    reads: list[str] = []
    await reader.db.set_trace_callback(
        lambda sql: reads.append(sql) if "FROM serial" in sql else None)
    try:
        s0 = await reader.serial()
        reads.clear()
        assert await reader.wait_changed(s0, 0.3) == s0  # ~30 polls at 10 ms, nothing new
        assert len(reads) == 1
        # two followers waiting on one store (dnsd and the proxy in one process): each
        # notices the commit at its next poll, not only the first to look
        waiters = [asyncio.create_task(reader.wait_changed(s0, 5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await writer.add_txt("a.gw.test", "v")
        async with asyncio.timeout(5):
            assert await asyncio.gather(*waiters) == [s0 + 1, s0 + 1]
        assert time.monotonic() - t0 < 0.5  # polls every 10 ms; max_wait is 5 s
        assert len(reads) == 5  # each wait's first read, then one per waiter after the commit
    finally:
        await writer.close()
        await reader.close()


class Flaky(Recorder):
    """A view whose first apply fails half-way, as a bug in a service's view would."""

    def apply(self, changes: ChangeSet) -> None:
        if not self.changes:
            self.changes.append(changes)
            raise RuntimeError("view bug")
        super().apply(changes)


async def test_a_failing_view_is_rebuilt_from_a_snapshot(store: Store) -> None:
    view = Flaky()
    follower = Follower(store, view, max_wait=0.05)
    await follower.load()
    task = asyncio.create_task(follower.run())
    try:
        await store.add_txt("a.gw.test", "v")
        await store.add_txt("b.gw.test", "v")
        target = await store.serial()
        async with asyncio.timeout(5):
            while follower.serial < target or len(view.snapshots) < 2:
                await follower.applied.wait()
        assert not task.done()
        seen = set(view.snapshots[-1].txt) | {k for c in view.changes[1:] for k in c.txt}
        assert {"a.gw.test", "b.gw.test"} <= seen  # nothing the failed apply held is lost
    finally:
        task.cancel()


async def test_a_writer_cancelled_mid_begin_leaves_no_transaction_open(store: Store) -> None:
    """A service stopping cancels its writes; the next writer must still get its BEGIN
    (aiosqlite runs a cancelled statement anyway: without the ROLLBACK behind it, every
    later write failed with 'cannot start a transaction within a transaction')."""
    for i in range(40):
        task = asyncio.create_task(store.add_txt("x.gw.test", f"v{i}"))
        for _ in range(i % 4):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.add_txt("y.gw.test", f"w{i}")
        await store.snapshot()
    assert len([t for t in await store.list_txt() if t.fqdn == "y.gw.test"]) == 40


async def test_certificate_rows_carry_chain_and_keys_not_in_their_repr(store: Store) -> None:
    cert = Certificate("zone", ("gw.test", "*.gw.test"), CertState.VALID, "-----CHAIN-----",
                       "aesgcm1:SEALEDKEY", order_url="https://ca/o/1",
                       order_key="aesgcm1:ORDERKEY")
    await store.put_certificate(cert)
    got = await store.get_certificate("zone")
    assert got is not None and replace(got, updated=0.0) == cert
    assert (await store.snapshot()).certificates["zone"].key == "aesgcm1:SEALEDKEY"
    for text in (repr(got), str(got), repr(await store.list_certificates())):
        assert "SEALEDKEY" not in text and "ORDERKEY" not in text and "CHAIN" not in text


async def test_one_lease_holder_at_a_time_renewed_released_and_taken_over(
        store: Store) -> None:
    if isinstance(store, PgStore):
        pytest.skip("the callers' clock is the lease clock on SQLite only (one machine)")
    serial = await store.serial()
    now = 1000.0
    a = await store.take_lease("cert:zone", "gw1#1", 20.0, now)
    assert (a.holder, a.expires) == ("gw1#1", 1020.0)
    b = await store.take_lease("cert:zone", "gw2#7", 20.0, now + 5)
    assert (b.holder, b.expires) == ("gw1#1", 1020.0)  # not granted: says until when
    a = await store.take_lease("cert:zone", "gw1#1", 20.0, now + 10)  # heartbeat
    assert a.expires == 1030.0
    assert (await store.take_lease("cert:other", "gw2#7", 20.0, now)).holder == "gw2#7"
    b = await store.take_lease("cert:zone", "gw2#7", 20.0, now + 30)  # lapsed: taken over
    assert (b.holder, b.expires) == ("gw2#7", 1050.0)
    await store.release_lease("cert:zone", "gw1#1")  # not the holder: nothing happens
    assert (await store.take_lease("cert:zone", "gw3#1", 20.0, now + 31)).holder == "gw2#7"
    await store.release_lease("cert:zone", "gw2#7")
    assert (await store.take_lease("cert:zone", "gw3#1", 20.0, now + 31)).holder == "gw3#1"
    # a restarted gateway frees its previous process's leases, and only those
    assert await store.release_leases("gw2#") == 1
    assert (await store.take_lease("cert:other", "gw1#1", 20.0, now + 32)).holder == "gw1#1"
    assert (await store.take_lease("cert:zone", "gw1#1", 20.0, now + 32)).holder == "gw3#1"
    assert await store.serial() == serial  # leases are not changes: no serial, no SOA bump


async def test_postgresql_judges_leases_by_its_own_clock_not_the_gateways(
        store_config: StoreConfig) -> None:
    """Two gateways whose clocks disagree by much more than a lease: the lease holds (the
    database's clock says when it runs out), and each learns its end in its own clock."""
    if not store_config.url:
        pytest.skip("SQLite: one machine, one clock (the callers')")
    a, b = await open_store(store_config), await open_store(store_config)
    try:
        skew = 3600.0  # b's clock runs an hour ahead of a's
        now = time.time()
        held = await a.take_lease("cert:zone", "gw1#1", 20.0, now)
        assert held.holder == "gw1#1" and 19.0 < held.expires - now <= 20.0
        seen = await b.take_lease("cert:zone", "gw2#1", 20.0, time.time() + skew)
        assert seen.holder == "gw1#1"  # not lapsed, whatever b's clock says
        assert 10.0 < seen.expires - (time.time() + skew) <= 20.0  # in b's clock
        assert (await b.take_lease("cert:zone", "gw2#1", 20.0, time.time() - skew)).holder \
            == "gw1#1"
        slow = await a.take_lease("cert:zone", "gw1#1", 20.0, time.time() - skew)  # a behind
        assert slow.holder == "gw1#1" and 10.0 < slow.expires - (time.time() - skew) <= 20.0
        # the heartbeat's new end is the database's now + ttl: a short lease lapses on time
        await a.take_lease("cert:zone", "gw1#1", 2.0, time.time() + skew)
        assert (await b.take_lease("cert:zone", "gw2#1", 20.0, time.time())).holder == "gw1#1"
        await asyncio.sleep(2.3)
        assert (await b.take_lease("cert:zone", "gw2#1", 20.0, time.time() - skew)).holder \
            == "gw2#1"  # lapsed by the database's clock, though b's is an hour behind
    finally:
        await a.close()
        await b.close()


async def test_concurrent_takers_get_one_holder(store_config: StoreConfig) -> None:
    stores = [await open_store(store_config) for _ in range(4)]
    try:
        got = await asyncio.gather(*(
            s.take_lease("cert:zone", f"gw{i}#1", 20.0, time.time())
            for i, s in enumerate(stores)))
        assert len({lease.holder for lease in got}) == 1
    finally:
        for s in stores:
            await s.close()


async def test_secrets_are_written_once(store: Store) -> None:
    assert await store.get_secret("acme-account") is None
    assert await store.put_secret_once("acme-account", "first") == "first"
    assert await store.put_secret_once("acme-account", "second") == "first"
    assert await store.get_secret("acme-account") == "first"
    assert "first" not in repr(await store.snapshot())  # secrets are not in any view


async def test_the_order_budget_is_counted_per_account_over_a_sliding_window(
        store: Store) -> None:
    ca, other = "https://ca.test/dir", "https://other.test/dir"
    for t in (100.0, 110.0, 120.0):
        assert await store.take_order_slot(ca, "zone", t, 60.0, 3) == 0.0
    assert await store.take_order_slot(ca, "shop", 130.0, 60.0, 3) == 160.0  # 100 + 60
    assert await store.take_order_slot(other, "zone", 130.0, 60.0, 3) == 0.0
    assert await store.take_order_slot(ca, "zone", 161.0, 60.0, 3) == 0.0  # 100 left it
    assert await store.take_order_slot(ca, "zone", 162.0, 60.0, 3) == 170.0
    await store.give_back_order_slot(ca, "zone", 162.5)  # none taken then: nothing
    assert await store.take_order_slot(ca, "zone", 163.0, 60.0, 3) == 170.0
    await store.give_back_order_slot(ca, "zone", 161.0 + 1e-6)  # only the exact one
    await store.give_back_order_slot(ca, "zone", 161.0)  # the CA created no order
    assert await store.take_order_slot(ca, "zone", 163.0, 60.0, 3) == 0.0


async def test_migration_4_keeps_certificates_and_their_old_file_paths(
        tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    con = sqlite3.connect(db)
    for i, script in enumerate(MIGRATIONS[:3], start=1):
        con.executescript(script + f"; PRAGMA user_version = {i};")
    con.executescript("""
        INSERT INTO certificates VALUES ('zone', '["gw.test", "*.gw.test"]', 'valid',
            '/var/certs/zone.1.fullchain.pem', '/var/certs/zone.1.key.pem', 1, 9, 6, 0, 0, '',
            '', 5);
    """)
    con.close()
    s = SqliteStore(db)
    await s.open()
    try:
        cert = await s.get_certificate("zone")
        assert cert is not None and cert.state == CertState.VALID and cert.renew_at == 6
        assert not cert.in_place  # until certd imports the files the paths name
        assert await s.legacy_certificate_files() == {
            "zone": ("/var/certs/zone.1.fullchain.pem", "/var/certs/zone.1.key.pem")}
        assert not await s.import_certificate("zone", "C", "plain:K", "/elsewhere/zone.pem")
        assert await s.import_certificate("zone", "C", "plain:K",
                                          "/var/certs/zone.1.fullchain.pem")
        assert not await s.import_certificate("zone", "D", "plain:L",
                                              "/var/certs/zone.1.fullchain.pem")  # has one
        got = await s.get_certificate("zone")
        assert got is not None and (got.chain, got.key, got.renew_at) == ("C", "plain:K", 6)
        assert await s.legacy_certificate_files() == {}
        rows = await store_rows(s, "SELECT cert_path, key_path FROM certificates")
        assert rows == [("/var/certs/zone.1.fullchain.pem", "/var/certs/zone.1.key.pem")]
    finally:
        await s.close()


async def test_renewal_advice_applies_only_to_the_chain_it_was_about(store: Store) -> None:
    cert = Certificate("zone", ("gw.test",), CertState.VALID, "CHAIN-1", "plain:K",
                       renew_at=500.0)
    await store.put_certificate(cert)
    serial = await store.serial()
    assert await store.set_renew_at("zone", "CHAIN-1", 400.0)
    got = await store.get_certificate("zone")
    assert got is not None and got.renew_at == 400.0 and got.chain == "CHAIN-1"
    assert await store.serial() == serial + 1  # followers hear of it
    await store.put_certificate(replace(cert, chain="CHAIN-2", renew_at=900.0))  # renewed
    assert not await store.set_renew_at("zone", "CHAIN-1", 300.0)
    got = await store.get_certificate("zone")
    assert got is not None and (got.chain, got.renew_at) == ("CHAIN-2", 900.0)
    assert not await store.set_renew_at("zone", "CHAIN-2", 900.0)  # no change, no serial
    assert not await store.set_renew_at("gone", "CHAIN-2", 1.0)

# ---------------------------------------------------------------- group commit

async def test_concurrent_writes_share_commits_and_every_one_lands(store: Store) -> None:
    s0 = await store.serial()
    await asyncio.gather(*(store.add_txt(f"t{i}.gw.test", f"v{i}") for i in range(60)))
    serial = await store.serial()
    assert s0 < serial < s0 + 60  # fewer transactions than writes
    cs = await store.changes_since(s0)
    assert cs is not None
    assert {k: v for k, v in cs.txt.items()} == {f"t{i}.gw.test": (f"v{i}",) for i in range(60)}
    assert len(await store.list_txt()) == 60


async def _failing_write(store: Any, fqdn: str, hold: float = 0.0) -> None:
    """A write that changes a row, then fails the way a store method can (or waits)."""
    async with store._write():
        await store._exec("INSERT INTO txt VALUES (?, ?, ?)", (fqdn, "no", time.time()))
        store._touch("txt", fqdn)
        if hold:
            await asyncio.sleep(hold)
        raise Conflict("this write is refused after it changed a row")


async def test_a_failing_write_undoes_only_its_own_statements(store: Store) -> None:
    s0 = await store.serial()
    got = await asyncio.gather(
        *(store.add_txt(f"a{i}.gw.test", "ok") for i in range(5)),
        _failing_write(store, "bad.gw.test"),
        *(store.add_txt(f"b{i}.gw.test", "ok") for i in range(5)),
        return_exceptions=True)
    assert [type(g) for g in got] == [type(None)] * 5 + [Conflict] + [type(None)] * 5
    names = {t.fqdn for t in await store.list_txt()}
    assert names == {f"{p}{i}.gw.test" for p in "ab" for i in range(5)}
    cs = await store.changes_since(s0)
    assert cs is not None and "bad.gw.test" not in cs.txt


async def test_a_write_cancelled_in_its_group_leaves_no_trace(store: Store) -> None:
    s0 = await store.serial()
    first = asyncio.create_task(store.add_txt("first.gw.test", "ok"))
    doomed = asyncio.create_task(_failing_write(store, "doomed.gw.test", hold=30))
    later = [asyncio.create_task(store.add_txt(f"l{i}.gw.test", "ok")) for i in range(3)]
    async with asyncio.timeout(10):
        await asyncio.sleep(0.3)  # the doomed write has changed its row and holds the group
        assert not first.done()  # ... which is not committed while a write of it runs
        doomed.cancel()
        await asyncio.gather(first, *later)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert {t.fqdn for t in await store.list_txt()} == {
        "first.gw.test", "l0.gw.test", "l1.gw.test", "l2.gw.test"}
    cs = await store.changes_since(s0)
    assert cs is not None and "doomed.gw.test" not in cs.txt
    await store.add_txt("after.gw.test", "ok")  # the store still writes


async def test_a_failed_commit_fails_every_write_of_its_group(tmp_path: Path) -> None:
    """SQLite refuses the group's serial bump (a trigger standing in for a full disk):
    no write of the group is reported done, and none of them is stored."""
    store = SqliteStore(tmp_path / "wg.db")
    await store.open()
    try:
        await store.add_txt("before.gw.test", "ok")
        await store.db.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON changes WHEN NEW.key = 'boom.gw.test'"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        first = asyncio.create_task(store.add_txt("one.gw.test", "ok"))
        group = [store.add_txt(f"g{i}.gw.test", "ok") for i in range(4)]
        got = await asyncio.gather(first, *group, store.add_txt("boom.gw.test", "ok"),
                                   return_exceptions=True)
        failed = [g for g in got if isinstance(g, StoreUnavailable)]
        assert len(failed) >= 2 and all(isinstance(g, StoreUnavailable) or g is None for g in got)
        stored = {t.fqdn for t in await store.list_txt()}
        # every write either failed, or is stored (it committed in an earlier group)
        for fqdn, g in zip(["one.gw.test", *(f"g{i}.gw.test" for i in range(4)),
                            "boom.gw.test"], got, strict=True):
            assert (fqdn in stored) == (g is None), (fqdn, g)
        assert "boom.gw.test" not in stored
        await store.db.execute("DROP TRIGGER full_disk")
        await store.add_txt("after.gw.test", "ok")
    finally:
        await store.close()

async def test_fleet_registry_heartbeats_move_no_serial(store: Store) -> None:
    """Registering is a change (the feed carries it); a heartbeat is not; stale gateways
    and their tunnels are dropped by the next heartbeat of another; a clean stop removes at
    once."""
    from webgateway.addresses import parse_ip
    from webgateway.model import Gateway

    gw1 = Gateway("gw1", (parse_ip("198.51.100.1"),), (parse_ip("2001:db8::1"),),
                  (parse_hostport("198.51.100.1:53"),), (parse_hostport("198.51.100.1:443"),),
                  "http://198.51.100.1:8000", 100.0, 100.0)
    gw2 = Gateway("gw2", (parse_ip("198.51.100.2"),), (), (), (), "", 100.0, 100.0)
    s0 = await store.serial()
    assert await store.register_gateway(gw1, 30.0) == []
    assert await store.register_gateway(gw2, 30.0) == []
    s1 = await store.serial()
    assert s1 == s0 + 2
    changes = await store.changes_since(s0)
    assert changes is not None and changes.gateways == {"gw1": gw1, "gw2": gw2}
    assert not changes.empty
    assert await store.register_gateway(replace(gw1, seen=130.0), 30.0) == []  # heartbeat
    assert await store.serial() == s1
    assert (await store.list_gateways())[0] == replace(gw1, seen=130.0)

    await store.sync_tunnels("gw1", ["hidden", "vault"], 130.0)
    await store.sync_tunnels("gw2", ["hidden"], 100.0)
    s2 = await store.serial()
    assert s2 == s1 + 2
    await store.sync_tunnels("gw1", ["vault", "hidden"], 131.0)  # the same set: a heartbeat
    assert await store.serial() == s2
    snap = await store.snapshot()
    assert snap.tunnels == {"hidden": frozenset({"gw1", "gw2"}), "vault": frozenset({"gw1"})}
    assert set(snap.gateways) == {"gw1", "gw2"}

    # gw2 stopped beating 40 s ago: gw1's heartbeat drops it with its tunnel; gw1's stays
    assert await store.register_gateway(replace(gw1, seen=140.0), 30.0) == ["gw2"]
    changes = await store.changes_since(s2)
    assert changes is not None
    assert changes.gateways == {"gw2": None} and changes.tunnels == {"hidden": frozenset({"gw1"})}
    assert await store.register_gateway(replace(gw1, seen=140.0), 30.0) == []
    s3 = await store.serial()
    assert s3 > s2

    await store.sync_tunnels("gw1", ["vault"], 141.0)  # the node of hidden went away
    changes = await store.changes_since(s3)
    assert changes is not None and changes.tunnels == {"hidden": frozenset()}
    assert await store.list_tunnels() == {"vault": frozenset({"gw1"})}
    await store.remove_gateway("gw1")
    snap = await store.snapshot()
    assert snap.gateways == {} and snap.tunnels == {}
