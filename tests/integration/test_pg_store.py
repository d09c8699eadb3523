"""What only the PostgreSQL store has to show, against a real throw-away server: NOTIFY wakes
followers, polling covers a missed NOTIFY, several gateways migrate and write concurrently, and
a stalled server or a held lock costs a caller ``timeout``, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.gateway import cli, write_config
from tests.postgres import Postgres
from tests.support import free_port
from webgateway.addresses import parse_hostport
from webgateway.model import Name
from webgateway.pg_store import MIGRATIONS, PgStore
from webgateway.store import QuotaExceeded, StoreUnavailable
from webgateway.tokens import hash_token


@contextlib.asynccontextmanager
async def opened(url: str, poll: float = 0.05, timeout: float = 5.0) -> AsyncIterator[PgStore]:
    s = PgStore(url, poll, timeout)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_notify_wakes_a_follower_long_before_its_poll(postgres_server: Postgres) -> None:
    url = postgres_server.new_database()
    async with opened(url) as writer, opened(url, poll=30.0) as reader:
        for _ in range(5):
            s0 = await reader.serial()
            waiter = asyncio.create_task(reader.wait_changed(s0, 20))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await writer.add_txt("a.gw.test", f"v{s0}")
            assert await asyncio.wait_for(waiter, 5) == s0 + 1
            assert time.monotonic() - t0 < 1.0


async def test_a_missed_notify_is_caught_by_polling(postgres_server: Postgres) -> None:
    url = postgres_server.new_database()
    async with opened(url) as writer, opened(url, poll=0.05) as reader:
        assert reader._listener is not None
        reader._listener.cancel()  # deaf: no NOTIFY will reach it
        s0 = await reader.serial()
        waiter = asyncio.create_task(reader.wait_changed(s0, 10))
        await asyncio.sleep(0.1)
        await writer.add_txt("a.gw.test", "v")
        assert await asyncio.wait_for(waiter, 5) == s0 + 1


async def test_gateways_starting_together_migrate_once(postgres_server: Postgres) -> None:
    url = postgres_server.new_database()
    stores = [PgStore(url, 0.05, 10.0) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert {await s.schema_version() for s in stores} == {len(MIGRATIONS)}
        rows = postgres_server.sql("SELECT count(*) FROM schema_version", db=url.rsplit("/", 1)[1])
        assert rows.strip() == str(len(MIGRATIONS))
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_writers_get_one_serial_each(postgres_server: Postgres) -> None:
    url = postgres_server.new_database()
    async with opened(url) as a, opened(url) as b:
        s0 = await a.serial()

        async def burst(store: PgStore, tag: str) -> None:
            for i in range(25):
                await store.add_txt(f"{tag}.gw.test", str(i))

        await asyncio.gather(burst(a, "a"), burst(b, "b"))
        assert await a.serial() == await b.serial() == s0 + 50
        cs = await b.changes_since(s0)
        assert cs is not None and cs.serial == s0 + 50
        assert len(cs.txt["a.gw.test"]) == len(cs.txt["b.gw.test"]) == 25
        db = url.rsplit("/", 1)[1]
        serials = postgres_server.sql("SELECT DISTINCT serial FROM changes ORDER BY 1", db=db)
        assert [int(x) for x in serials.split()] == list(range(s0 + 1, s0 + 51))


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a stalled database)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


async def test_a_silent_server_is_unavailable_within_the_timeout(silent_server: int) -> None:
    s = PgStore(f"postgresql://wg@127.0.0.1:{silent_server}/wg", 0.05, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await s.open()
    assert time.monotonic() - t0 < 2.0


async def test_a_held_lock_costs_the_timeout_not_a_hang(postgres_server: Postgres) -> None:
    url = postgres_server.new_database()
    async with opened(url, timeout=0.5) as store:
        await store.add_txt("a.gw.test", "before")
        blocker = await asyncpg.connect(url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE serial IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.add_txt("a.gw.test", "blocked")
            with pytest.raises(StoreUnavailable):
                await store.serial()
            assert time.monotonic() - t0 < 3.0
            await tx.rollback()
        finally:
            await blocker.close()
        await store.add_txt("a.gw.test", "after")  # a new connection, no restart
        snap = await store.snapshot()
        assert snap.txt["a.gw.test"] == ("before", "after")


def test_run_with_postgres_unreachable_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = write_config(tmp_path, store={"url": f"postgresql://wg@127.0.0.1:{port}/wg",
                                        "timeout": 1.0, "plaintext_keys": True})
    done = cli("run", "--config", str(cfg))
    assert done.returncode == 1
    assert done.stderr.startswith("webgateway: the store cannot be opened: cannot connect")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


async def test_two_gateways_racing_for_one_label_one_wins(postgres_server: Postgres) -> None:
    """Check-then-act across gateways: the serial row lock serializes writers fleet-wide."""
    url = postgres_server.new_database()
    async with opened(url) as a, opened(url) as b:
        alice = await a.create_owner("alice", "ha")
        bob = await b.create_owner("bob", "hb")
        be = (parse_hostport("10.0.0.1:80"),)
        for i in range(20):
            results = await asyncio.gather(
                a.put_name(Name(f"x{i}", alice.id, be), 100),
                b.put_name(Name(f"x{i}", bob.id, be), 100),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["Forbidden", "bool"], results
        # quotas hold across gateways too: 3 concurrent creations against a limit of 2
        limit = len(await a.list_names(alice.id)) + 2
        results = await asyncio.gather(
            *(s.put_name(Name(f"q{i}", alice.id, be), limit) for i, s in enumerate((a, b, a))),
            return_exceptions=True,
        )
        assert sum(isinstance(r, QuotaExceeded) for r in results) == 1


async def test_owner_add_on_the_box_uses_the_configured_postgres(
    tmp_path: Path, postgres_server: Postgres
) -> None:
    url = postgres_server.new_database()
    cfg = write_config(tmp_path, store={"url": url, "plaintext_keys": True})
    done = await asyncio.to_thread(cli, "owner", "add", "bob", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    async with opened(url) as store:
        owner = await store.owner_by_token_hash(hash_token(token))
        assert owner is not None and owner.name == "bob"
    assert not (tmp_path / "var" / "webgateway.db").exists()  # no SQLite file on the side


async def test_migration_from_version_1_keeps_domains_as_claims(
    postgres_server: Postgres,
) -> None:
    """A fleet database made by an older build is upgraded in place at start-up."""
    url = postgres_server.new_database()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(MIGRATIONS[0])
        await conn.execute("""
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (1);
            INSERT INTO owners (name, token_hash, created) VALUES ('alice', 'h1', 0);
            INSERT INTO names VALUES ('shop', 1, '[]', 'terminate', 0, 0, 0, 0);
            INSERT INTO domains VALUES ('shop.example.org', 'shop', 1,
                                        'd0123456789abcdef01234567', 'active', 'valid', 5);
        """)
    finally:
        await conn.close()
    async with opened(url) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        held = (await store.snapshot()).domains["shop.example.org"]
        assert held.challenge_label == "d0123456789abcdef01234567"
        assert held.created == held.updated == 5
        bob = await store.create_owner("bob", "h2")  # the identity continues after id 1
        assert bob.id == 2
