"""kill -9 of ``webgateway run`` while custom-domain orders are in flight: after a restart
every order completes, the store is intact, no TXT is left, and every certificate was
obtained exactly once. None is repeated: a certificate is logged as obtained only after
the row marking it valid is stored, a valid row is not ordered again, and an order the
kill interrupted is resumed by its stored URL (or, if the CA dropped it meanwhile,
replaced by a new order that is still obtained once)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import cli, write_config
from tests.knot import Knot, knot_missing, owner_zone
from tests.pebble import pebble_factory, requires_pebble
from tests.procs import Proc, wait_tcp
from tests.support import free_port

__all__ = ["pebble_factory"]
pytestmark = [requires_pebble,
              pytest.mark.skipif(knot_missing(), reason="needs knotd (apt: knot)")]

CLI = [sys.executable, "-m", "webgateway.cli"]
DOMAINS = [f"site{i}.example.org" for i in range(12)]


def db_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return list(con.execute(sql).fetchall())
    finally:
        con.close()


def put(url: str, token: str, path: str, body: dict[str, object]) -> Any:
    req = urllib.request.Request(url + path, method="PUT", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 201)
        return json.loads(r.read())


@pytest.fixture
def owner_dns(tmp_path: Path) -> Iterator[tuple[Knot, int]]:
    """The domain owner's DNS host, where the claims' proofs are created."""
    port = free_port()
    knot = Knot(tmp_path / "knot", "127.0.0.1", port, {"example.org": owner_zone("example.org")})
    try:
        yield knot, port
    finally:
        knot.stop()


def test_kill_9_of_run_mid_orders(tmp_path: Path, pebble_factory,  # type: ignore[no-untyped-def]
                                  owner_dns: tuple[Knot, int]) -> None:
    dns_port, api_port = free_port(), free_port()
    knot, knot_port = owner_dns
    pb = pebble_factory(("127.0.0.1", dns_port))
    cfg = write_config(
        tmp_path, dns={"listen": [f"127.0.0.1:{dns_port}"]},
        api={"listen": f"127.0.0.1:{api_port}", "max_domains_per_owner": 100},
        acme={"directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
              "resolver": f"127.0.0.1:{knot_port}", "concurrency": 2},
        store={"poll_interval": 0.02})
    db = tmp_path / "var" / "webgateway.db"
    url = f"http://127.0.0.1:{api_port}"
    token = cli("owner", "add", "crash", "--config", str(cfg)).stdout.strip()

    run1 = Proc("run1", [*CLI, "run", "--config", str(cfg)], tmp_path / "run1.log")
    try:
        wait_tcp("127.0.0.1", api_port, run1)
        put(url, token, "/v1/names/site", {"backends": ["10.0.0.1:80"]})
        records = []
        for d in DOMAINS:
            claim = put(url, token, f"/v1/domains/{d}", {"name": "site"})
            records += [(r["name"].removesuffix(".example.org"), "CNAME", r["target"] + ".")
                        for r in claim["records"]]
        knot.set_records("example.org", records)
        end = time.monotonic() + 60
        while True:  # some done, some still ordering: the worst moment to die
            run1.check()
            valid = db_rows(db, "SELECT COUNT(*) FROM certificates WHERE state='valid'")[0][0]
            in_flight = db_rows(db, "SELECT COUNT(*) FROM certificates WHERE state!='valid'"
                                    " AND order_url != ''")[0][0]
            if isinstance(valid, int) and valid >= 2 and in_flight:
                break
            assert time.monotonic() < end, run1.tail()
            time.sleep(0.01)
    finally:
        run1.stop(signal.SIGKILL)

    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]
    run2 = Proc("run2", [*CLI, "run", "--config", str(cfg)], tmp_path / "run2.log")
    try:
        end = time.monotonic() + 90
        wanted = {"zone", *DOMAINS}
        while True:
            run2.check()
            valid = {r[0] for r in db_rows(db, "SELECT id FROM certificates WHERE state='valid'")}
            if valid >= wanted and not db_rows(db, "SELECT 1 FROM txt"):
                break
            assert time.monotonic() < end, f"{sorted(wanted - valid)}\n{run2.tail()}"
            time.sleep(0.1)
    finally:
        assert run2.stop() == 0, run2.tail()
    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]
    logs = (tmp_path / "run1.log").read_text() + (tmp_path / "run2.log").read_text()
    # a resumed order never fails for want of its key (the crash may fall between writing the
    # files and storing the row); a failure would back off for a minute
    assert " failed (" not in (tmp_path / "run2.log").read_text(), run2.tail()
    issued = Counter(re.findall(r"certificate (\S+) for .* obtained", logs))
    # never twice; at most one line short per order slot (concurrency 2): the row is stored
    # valid before its "obtained" line, the rows of both slots may commit in one grouped
    # write, and run1 may die before either line (run2 then rightly orders nothing)
    assert set(issued) <= wanted and max(issued.values()) == 1, issued
    assert len(wanted - set(issued)) <= 2, issued
    picked_up = re.findall(r"resuming order|starting over", (tmp_path / "run2.log").read_text())
    assert picked_up, run2.tail()  # the kill did interrupt an order, and run2 took it up
