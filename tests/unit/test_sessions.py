"""The dashboard's session table: expiry, sign-out, bounded size, CSRF comparison."""

from __future__ import annotations

from webgateway.sessions import SessionTable, same_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_close() -> None:
    clock = Clock()
    table = SessionTable(ttl=60, clock=clock)
    s = table.open("hash-a")
    assert table.get(s.id) is s and s.token_hash == "hash-a"
    assert s.id != s.csrf and len(s.id) >= 40 and len(s.csrf) >= 40
    assert table.get("forged") is None and table.get(None) is None and table.get("") is None
    clock.now += 59
    assert table.get(s.id) is s
    clock.now += 1
    assert table.get(s.id) is None and len(table) == 0
    t = table.open("hash-b")
    table.close(t.id)
    assert table.get(t.id) is None
    table.close(t.id)  # twice is harmless


def test_table_is_bounded_and_drops_expired_on_open() -> None:
    clock = Clock()
    table = SessionTable(ttl=60, max_sessions=100, clock=clock)
    first = [table.open(f"h{i}") for i in range(150)]
    assert len(table) == 100
    assert table.get(first[0].id) is None and table.get(first[-1].id) is first[-1]
    clock.now += 61
    table.open("late")
    assert len(table) == 1


def test_csrf_comparison() -> None:
    assert same_secret("abc", "abc")
    assert not same_secret("abd", "abc")
    assert not same_secret("", "")  # an empty expected value never matches
    assert not same_secret(None, "abc")
    assert not same_secret(b"abc", "abc")
    assert not same_secret("\u00e9\udcff", "abc")  # non-ASCII (even a lone surrogate)
