"""Pure parts of what operators see: access-log lines, JSON log records, bounded series,
DNS counters, and the config keys behind them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import dns.message
import pytest
from prometheus_client import CollectorRegistry

from dnsd.responder import QTYPE_NAMES, RCODES, Responder
from dnsd.zone import ZoneView
from proxy.accesslog import AccessLog, entry
from proxy.metrics import CATCH_ALL, OTHER, ProxyMetrics
from proxy.routes import RouteTable
from tests.support import ZONE, make_config, raw_config
from webgateway.addresses import parse_hostport
from webgateway.config import STDOUT, ConfigError, LogConfig, parse_config
from webgateway.logsetup import JsonFormatter, configure
from webgateway.model import Name, Snapshot
from webgateway.when import rfc3339_ms

# ------------------------------------------------------------------ access log


def test_entry_is_one_json_line_with_every_field() -> None:
    line = entry(now=0.5, client=("2001:db8::7", 443), sni='x".gw.test', route=None,
                 mode=None, backend=None, bytes_in=0, bytes_out=0, duration=0.0123456789,
                 outcome="handshake_failed", reason="bad_hello")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    got = json.loads(line)
    assert got == {"time": "1970-01-01T00:00:00.500Z", "client": "2001:db8::7",
                   "client_port": 443, "sni": 'x".gw.test', "route": None, "mode": None,
                   "backend": None, "bytes_in": 0, "bytes_out": 0, "duration": 0.012346,
                   "outcome": "handshake_failed", "reason": "bad_hello"}


def test_access_log_flushes_after_a_second_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def main() -> None:
        log = AccessLog(path)
        log.record(client=("127.0.0.1", 1), sni=None, route="a", mode="passthrough",
                   backend=parse_hostport("[fd00::5]:443"), bytes_in=1, bytes_out=2,
                   duration=0.1, outcome="ok", reason=None)
        assert path.read_bytes() == b""  # buffered
        await asyncio.sleep(1.2)
        first = json.loads(path.read_text())
        assert first["backend"] == "[fd00::5]:443" and first["route"] == "a"
        os.rename(path, tmp_path / "access.log.1")  # logrotate's default (create) mode
        log.write(b'{"second":1}\n')
        log.close()

    asyncio.run(main())
    assert path.read_text() == '{"second":1}\n'
    assert (tmp_path / "access.log.1").read_text().count("\n") == 1


def test_access_log_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        log = AccessLog(STDOUT)
        log.write(b'{"a":1}\n')
        log.close()

    asyncio.run(main())
    assert capfd.readouterr().out == '{"a":1}\n'
    os.write(1, b"")  # standard output stays open


def test_access_log_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        AccessLog(tmp_path)  # a directory
    assert e.value.key == "log.access_log"


# ------------------------------------------------------------------ JSON logs


def test_json_formatter_carries_the_exception_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x.y").makeRecord(
            "x.y", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    out = json.loads(JsonFormatter("proxy-worker").format(record))
    assert out["level"] == "error" and out["logger"] == "x.y" and out["message"] == "failed here"
    assert out["process"] == "proxy-worker" and out["time"].endswith("Z")
    assert "ValueError: boom" in out["exception"] and "Traceback" in out["exception"]


def test_configure_json_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(LogConfig(level="debug", format="json"))
        logging.getLogger("webgateway.t").warning("line\nwith a newline")
        logging.getLogger("webgateway.t").debug("second")
        lines = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:], root.level = saved
    assert [json.loads(x)["message"] for x in lines] == ["line\nwith a newline", "second"]


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339_ms(1_700_000_000.0429) == "2023-11-14T22:13:20.042Z"


# ------------------------------------------------------------------ config keys


def test_log_and_catch_all_keys(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert cfg.log.format == "text" and cfg.log.access_log is None
    assert cfg.proxy.catch_all is None
    cfg = parse_config(raw_config(tmp_path, log={"format": "json", "access_log": "l/a.log"},
                                  proxy={"catch_all": "[fd00::9]:443"}), tmp_path)
    assert cfg.log.access_log == tmp_path / "l" / "a.log"
    assert str(cfg.proxy.catch_all) == "[fd00::9]:443"
    cfg = parse_config(raw_config(tmp_path, log={"access_log": "-"}), tmp_path)
    assert cfg.log.access_log == STDOUT
    assert parse_config(raw_config(tmp_path, log={"access_log": ""}), tmp_path).log.access_log \
        is None


@pytest.mark.parametrize(("section", "key", "bad", "says"), [
    ("log", "format", "xml", '"text" or "json"'),
    ("log", "format", 1, "expected a string"),
    ("log", "access_log", "a\x00b", "NUL"),
    ("log", "access_log", ["x"], "expected a string"),
    ("proxy", "catch_all", "legacy.example:443", "not an IPv4 or IPv6 address"),
    ("proxy", "catch_all", "[fd00::9]", "[addr]:port"),
    ("proxy", "catch_all", "10.0.0.1:0", "between 1 and 65535"),
])
def test_bad_log_and_catch_all_values_name_the_key(tmp_path: Path, section: str, key: str,
                                                  bad: object, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(raw_config(tmp_path, **{section: {key: bad}}), tmp_path)
    assert e.value.key == f"{section}.{key}"
    assert says.lower() in e.value.reason.lower(), e.value.reason


# ------------------------------------------------------------------ bounded per-name series


def _samples(registry: CollectorRegistry, family: str) -> dict[str, float]:
    return {s.labels["name"]: s.value for m in registry.collect() if m.name == family
            for s in m.samples if s.name.endswith("_total")}


def test_per_name_series_are_capped_and_pruned_when_names_leave() -> None:
    registry = CollectorRegistry()
    table = RouteTable(ZONE)
    be = (parse_hostport("[fd00::1]:80"),)
    table.names = {n: Name(n, 1, be) for n in ("a", "b", "c")}
    m = ProxyMetrics(registry, table, max_names=2)
    for label in ("a", "b", "c", "c", CATCH_ALL):
        m.name_done(label, 10, 20)
    assert _samples(registry, "webgateway_proxy_name_connections") == {
        "a": 1, "b": 1, OTHER: 3}  # c and the catch-all over the cap
    del table.names["a"]
    table.serial += 1  # the table changed: a's series may go
    m.name_done("c", 1, 1)
    got = _samples(registry, "webgateway_proxy_name_connections")
    assert got == {"b": 1, "c": 1, OTHER: 3}
    assert len(_samples(registry, "webgateway_proxy_name_bytes")) == 3


def test_a_client_server_name_never_becomes_a_label() -> None:
    registry = CollectorRegistry()
    m = ProxyMetrics(registry, RouteTable(ZONE))
    m.outcome("unknown_sni")
    assert _samples(registry, "webgateway_proxy_name_connections") == {}


# ------------------------------------------------------------------ DNS counters


def _responder(tmp_path: Path) -> Responder:
    return Responder(ZoneView(make_config(tmp_path).zone))


def _count(r: Responder, rcode: int, qtype: str) -> int:
    return r.counts[QTYPE_NAMES.index(qtype) * RCODES + rcode]


def test_queries_counted_by_rcode_and_bounded_qtype_on_hits_too(tmp_path: Path) -> None:
    r = _responder(tmp_path)
    for rdtype in ("SOA", "SOA", 65280, 4095):  # the second SOA is a cache hit
        q = dns.message.make_query(ZONE, rdtype)
        q.id = 7
        assert r.handle(q.to_wire()) is not None
    assert _count(r, 0, "SOA") == 2 and _count(r, 0, "other") == 2 and r.hits == 1
    assert r.handle(b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00") is not None
    assert _count(r, 1, "none") == 1  # FORMERR without a question
    assert r.handle(b"\x00\x01\x80") is None and r.dropped == 1  # a runt


def test_truncated_replies_are_counted_on_every_hit(tmp_path: Path) -> None:
    r = _responder(tmp_path)
    big = [f"{i}" * 200 for i in range(6)]
    r.view.load(Snapshot(serial=2, names={}, domains={}, txt={f"big.{ZONE}": tuple(big)},
                         certificates={}))
    q = dns.message.make_query(f"big.{ZONE}", "TXT", use_edns=False).to_wire()
    for _ in range(3):
        resp = r.handle(q)
        assert resp is not None and resp[2] & 0x02
    assert r.truncated() == 3 and r.hits == 2
