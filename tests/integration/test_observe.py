"""What an operator sees of a running gateway: /metrics, the access log, JSON logs, catch-all.

The gateway is the real ``webgateway run`` process; DNS is asked with dnspython, HTTPS with
curl and ``openssl s_client``, and /metrics is read with Prometheus' own text parser.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from proxy.accesslog import AccessLog
from tests.gateway import running, write_config
from tests.integration.proxy_harness import (
    Backend,
    BackendServer,
    curl,
    fqdn,
    gateway,
    refused_at_start,
    run,
)
from tests.support import ZONE, cert_row, make_config
from webgateway.sqlite_store import SqliteStore

ACCESS_FIELDS = {"time", "client", "client_port", "sni", "route", "mode", "backend", "bytes_in",
                 "bytes_out", "duration", "outcome"}


def scrape(url: str, token: str) -> dict[str, Any]:
    """/metrics parsed: family name -> {(sample name, sorted labels): value}."""
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {"type": fam.type, "samples": {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}}
    return out


def api(url: str, method: str, path: str, token: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def value(metrics: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return float(metrics[family]["samples"].get((sample, tuple(sorted(labels.items()))), 0.0))


async def wait_for(check: Any, seconds: float = 10.0) -> Any:
    end = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


async def query(port: int, name: str, rdtype: int | str, **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3, ignore_trailing=True)


async def test_metrics_access_log_and_json_logs_of_a_running_gateway(tmp_path: Path) -> None:
    backend = BackendServer("web", "127.0.0.1")
    await backend.start()
    # one fleet heartbeat (at start) in the test's time: the store's writes are then known
    cfg_path = write_config(tmp_path, log={"format": "json", "access_log": "logs/access.log"},
                            fleet={"heartbeat": 300, "stale_after": 900})
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert(ZONE, f"*.{ZONE}")
    doc = cfg_path.read_text()
    dns_port = int(doc.split("[dns]")[1].split('"127.0.0.1:')[1].split('"')[0])
    https_port = int(doc.split("https_listen")[1].split('"127.0.0.1:')[1].split('"')[0])
    try:
        with running(cfg_path, "run") as (proc, url):
            admin = (tmp_path / "admin.token").read_text().strip()
            alice = api(url, "POST", "/v1/owners", admin, {"name": "alice"})["token"]
            api(url, "PUT", "/v1/names/web", alice, {"backends": [backend.addr]})
            store = SqliteStore(tmp_path / "var" / "webgateway.db", 0.02)
            await store.open()
            try:  # what certd would write: a certificate, challenge TXT
                await store.put_certificate(cert_row("zone", (ZONE, f"*.{ZONE}"), leaf,
                                                     not_after=time.time() + 86400))
                for i in range(6):  # > 512 bytes of TXT: truncated over UDP without EDNS
                    await store.add_txt(f"big.{ZONE}", f"{i}" * 200)
            finally:
                await store.close()

            host = fqdn("web")

            async def served() -> bool:
                rc, out, _ = await run(
                    "curl", "-sS", "--max-time", "5", "--cacert", str(ca_file), "--resolve",
                    f"{host}:{https_port}:127.0.0.1", f"https://{host}:{https_port}/hello")
                return rc == 0 and out == b"web /hello\n"

            end = time.monotonic() + 15
            while not await served():  # the proxy follows the store by polling
                assert time.monotonic() < end
                await asyncio.sleep(0.1)
            # DNS: an answer, a name that does not exist, a type we do not list, truncation
            assert (await query(dns_port, host, "A")).answer
            assert (await query(dns_port, f"nope.{ZONE}", "TXT")).rcode() == 3
            await query(dns_port, host, 65280)  # private-use type: counted as "other"
            big = await query(dns_port, f"big.{ZONE}", "TXT", use_edns=False)
            assert big.flags & dns.flags.TC
            # TLS: a server name we do not serve, with openssl, keeps the alert
            r = await run("openssl", "s_client", "-connect", f"127.0.0.1:{https_port}",
                          "-servername", f"unknown.{ZONE}", stdin=b"")
            assert b"unrecognized name" in r[1] + r[2]

            def settled() -> dict[str, Any] | None:
                """Every connection has ended (they are counted as they end)."""
                m = scrape(url, admin)
                ended = value(m, "webgateway_proxy_connections",
                              "webgateway_proxy_connections_total", outcome="unknown_sni")
                still = value(m, "webgateway_proxy_open_connections",
                              "webgateway_proxy_open_connections")
                return m if ended == 1 and still == 0 else None

            m = await wait_for(settled)
            ok = value(m, "webgateway_proxy_connections", "webgateway_proxy_connections_total",
                       outcome="ok")
            assert ok >= 1
            q = "webgateway_dns_queries"
            assert m[q]["type"] == "counter"
            assert value(m, q, q + "_total", rcode="NOERROR", qtype="A") == 1
            assert value(m, q, q + "_total", rcode="NXDOMAIN", qtype="TXT") == 1
            assert value(m, q, q + "_total", rcode="NOERROR", qtype="other") == 1
            assert value(m, q, q + "_total", rcode="NOERROR", qtype="TXT") == 1  # truncated
            assert value(m, "webgateway_dns_truncated", "webgateway_dns_truncated_total") == 1
            assert value(m, "webgateway_dns_dropped", "webgateway_dns_dropped_total",
                         reason="not_a_query") == 0
            n = "webgateway_proxy_name_connections"
            assert value(m, n, n + "_total", name="web") == ok
            b = "webgateway_proxy_name_bytes"
            assert value(m, b, b + "_total", name="web", direction="in") > 40  # a GET
            assert value(m, b, b + "_total", name="web", direction="out") > 11
            assert "webgateway_proxy_handshake_failures" in m
            assert "webgateway_proxy_backend_failures" in m
            assert value(m, "webgateway_tunnels_connected", "webgateway_tunnels_connected") == 0
            w = "webgateway_store_write_seconds"
            # two via the API; the fleet registration and the tunnel presence at start-up
            assert m[w]["type"] == "histogram" and value(m, w, w + "_count") == 4
            assert value(m, "webgateway_api_requests", "webgateway_api_requests_total",
                         route="/v1/owners", status="201") == 1
            for name, fam in m.items():  # one naming rule for every family
                assert name.startswith("webgateway_"), name
                for sample, _ in fam["samples"]:
                    if fam["type"] == "counter":
                        assert sample.endswith(("_total", "_created")), sample
                    if fam["type"] == "histogram":
                        assert name.endswith("_seconds"), name

            # the access log: lines appear within the flush delay, while the gateway runs
            log_file = tmp_path / "logs" / "access.log"

            def lines() -> list[dict[str, Any]] | None:
                if not log_file.exists():
                    return None
                got = [json.loads(x) for x in log_file.read_text().splitlines()]
                return got if any(x["outcome"] == "unknown_sni" for x in got) else None

            entries = await wait_for(lines, 5)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
    finally:
        await backend.close()
    for e in entries:
        assert set(e) >= ACCESS_FIELDS, e
        assert e["time"].endswith("Z") and e["client"] == "127.0.0.1" and e["duration"] >= 0
    served_lines = [e for e in entries if e["outcome"] == "ok"]
    assert served_lines and all(
        e["sni"] == host and e["route"] == "web" and e["mode"] == "terminate"
        and e["backend"] == backend.addr and e["bytes_in"] > 40 and e["bytes_out"] > 11
        for e in served_lines)
    (unknown,) = [e for e in entries if e["outcome"] == "unknown_sni"]
    assert unknown["sni"] == f"unknown.{ZONE}" and unknown["route"] is None
    text = log_file.read_text()
    for secret in (alice, admin, "PRIVATE KEY"):
        assert secret not in text and secret not in err
    # the service log is JSON, one object per line, from start to the clean stop
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"] == "stopping" for r in records)


async def test_catch_all_passes_unknown_and_missing_names_to_its_backend(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("legacy.example").configure_cert(server_ctx)
    tls_backend = BackendServer("legacy", "127.0.0.1")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Backend(tls_backend), "127.0.0.1", 0,
                                      ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "legacy-ca.pem").write_bytes(ca.cert_pem.bytes())
    try:
        async with gateway(tmp_path, catch_all=f"127.0.0.1:{port}") as gw:
            plain = BackendServer("named", "127.0.0.1")
            await plain.start()
            await gw.certificate("zone", ZONE, f"*.{ZONE}")
            await gw.name("known", plain.addr)
            # an unknown name reaches the catch-all's own TLS, untouched (its certificate)
            rc, out, err = await run(
                "curl", "-sS", "--max-time", "10", "--cacert", str(tmp_path / "legacy-ca.pem"),
                "--resolve", f"legacy.example:{gw.https_port}:127.0.0.1",
                f"https://legacy.example:{gw.https_port}/old")
            assert rc == 0 and out == b"legacy /old\n", err
            # no SNI at all: openssl without a server name still reaches it
            r = await run("openssl", "s_client", "-connect", f"127.0.0.1:{gw.https_port}",
                          "-noservername", "-ign_eof", "-CAfile",
                          str(tmp_path / "legacy-ca.pem"),
                          stdin=b"GET /nosni HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                          timeout=20)
            assert b"legacy /nosni" in r[1], r[2]
            assert b"Verify return code: 0" in r[1]
            # a name we serve is still ours
            rc, out, _ = await curl(gw, fqdn("known"), "/k")
            assert rc == 0 and out == b"named /k\n"
            assert tls_backend.connections == 2 and plain.connections == 1
            sample = gw.registry.get_sample_value
            await wait_for(lambda: sample("webgateway_proxy_name_connections_total",
                                          {"name": "_catch_all"}) == 2)
            assert sample("webgateway_proxy_connections_total", {"outcome": "unknown_sni"}) is None
            await plain.close()
    finally:
        server.close()


@pytest.mark.parametrize("allow_loopback", [False, True])
async def test_catch_all_is_judged_by_the_backend_policy_at_start(tmp_path: Path,
                                                                  allow_loopback: bool) -> None:
    cfg = make_config(tmp_path, api={"allow_loopback_backends": allow_loopback})
    own = cfg.proxy.https_listen[0]
    target = "127.0.0.1:9" if not allow_loopback else str(own)  # loopback / our own listener
    cfg = make_config(tmp_path, api={"allow_loopback_backends": allow_loopback},
                      proxy={"https_listen": [str(own)], "catch_all": target})
    err = await refused_at_start(cfg)
    assert err.key == "proxy.catch_all"
    assert ("loopback" if not allow_loopback else "own listener") in err.reason


async def test_hostile_hellos_leave_clean_lines_and_no_new_series(tmp_path: Path) -> None:
    from tests.unit.test_proxy_clienthello import _hello_with, _sni_ext, real_hello

    log_path = tmp_path / "access.log"
    async with gateway(tmp_path) as gw:
        gw.proxy.engine.access_log = AccessLog(log_path)
        hostile = [
            _hello_with(_sni_ext(b'evil".gw.test\n{"outcome":"ok"}')),  # JSON/line injection
            _hello_with(_sni_ext(b"\xc3\xa9\x00.gw.test")),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not TLS
            b"\x16\x03\x01\xff\xff" + b"\x01" * 64,  # a record longer than allowed
        ]
        unknown = [real_hello(f"n{i}.unknown.example") for i in range(30)]
        for data in hostile + unknown:
            r, w = await asyncio.open_connection("127.0.0.1", gw.https_port)
            w.write(data)
            await w.drain()
            await asyncio.wait_for(r.read(), 10)  # an alert or a close, never a hang
            w.close()
        await wait_for(lambda: gw.proxy.engine.count == 0)
        gw.proxy.engine.access_log.flush()
        sample = gw.registry.get_sample_value
        assert sample("webgateway_proxy_handshake_failures_total", {"reason": "bad_hello"}) == 4
        assert sample("webgateway_proxy_connections_total", {"outcome": "unknown_sni"}) == 30
        labels = {v for m in gw.registry.collect() for s in m.samples for v in s.labels.values()}
        assert not any("unknown.example" in v or "evil" in v for v in labels)
    lines = log_path.read_text().splitlines()
    assert len(lines) == 34
    entries = [json.loads(line) for line in lines]
    assert [e["outcome"] for e in entries[:4]] == ["handshake_failed"] * 4
    assert all(e["sni"] is None and e["reason"] == "bad_hello" for e in entries[:4])
    assert {e["sni"] for e in entries[4:]} == {f"n{i}.unknown.example" for i in range(30)}


async def test_open_connections_bytes_count_while_they_last_and_once(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with gateway(tmp_path) as gw:
        gw.proxy.engine.access_log = AccessLog(log_path)
        backend = BackendServer("b", "127.0.0.1")
        await backend.start()
        await gw.certificate("zone", ZONE, f"*.{ZONE}")
        await gw.name("dl", backend.addr)
        ctx = ssl.create_default_context(cafile=str(gw.ca_file))
        r, w = await asyncio.open_connection("127.0.0.1", gw.https_port, ssl=ctx,
                                             server_hostname=fqdn("dl"))
        sample = gw.registry.get_sample_value

        def out() -> float:
            return sample("webgateway_proxy_name_bytes_total",
                          {"name": "dl", "direction": "out"}) or 0.0

        for n in (100_000, 50_000):
            w.write(f"GET /big/{n} HTTP/1.1\r\nHost: {fqdn('dl')}\r\n\r\n".encode())
            await r.readuntil(b"\r\n\r\n")
            await r.readexactly(n)
            await asyncio.sleep(0.05)
            gw.proxy.engine.count_traffic()  # what the service does every 10 s
        assert 150_000 < out() < 151_000  # both bodies (and heads), the connection open
        assert sample("webgateway_proxy_name_connections_total", {"name": "dl"}) == 0
        w.close()
        await wait_for(lambda: gw.proxy.engine.count == 0)
        gw.proxy.engine.access_log.flush()
        (line,) = [json.loads(x) for x in log_path.read_text().splitlines()]
        assert out() == line["bytes_out"] and line["outcome"] == "ok"  # counted once
        assert sample("webgateway_proxy_name_bytes_total",
                      {"name": "dl", "direction": "in"}) == line["bytes_in"]
        assert sample("webgateway_proxy_name_connections_total", {"name": "dl"}) == 1
        await backend.close()


async def test_port_80_requests_get_the_same_access_log_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with gateway(tmp_path, handshake_timeout=1.0) as gw:
        gw.proxy.engine.access_log = AccessLog(log_path)
        await gw.name("web", "10.1.2.3:80")
        for host in (fqdn("web"), fqdn("nobody")):
            rc, out, err = await run(
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                f"{host}:{gw.http_port}:127.0.0.1", f"http://{host}:{gw.http_port}/p?token=x")
            assert rc == 0 and out in (b"301", b"404"), err
        hostile = [
            b'GET / HTTP/1.1\r\nHost: evil".gw.test\n{"outcome":"ok"}\r\n\r\n',  # injection
            b"GET / HTTP/1.1\r\nHost: \xc3\xa9.gw.test\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello",  # TLS on the plain port
            b"",  # connects and leaves
        ]
        for data in hostile:
            r, w = await asyncio.open_connection("127.0.0.1", gw.http_port)
            if data:
                w.write(data)
                await w.drain()
                assert (await asyncio.wait_for(r.read(), 10)).startswith(b"HTTP/1.1 400")
            w.close()
        r, w = await asyncio.open_connection("127.0.0.1", gw.http_port)
        w.write(b"GET / HTTP/1.1\r\n")  # and nothing more: handshake_timeout ends it
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        await wait_for(lambda: gw.proxy.engine.count == 0)
        await asyncio.sleep(0.05)
        gw.proxy.engine.access_log.flush()
        sample = gw.registry.get_sample_value
        counts = {o: sample("webgateway_proxy_http_requests_total", {"outcome": o})
                  for o in ("redirect", "not_found", "bad_request", "client_closed", "timeout")}
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["outcome"] for e in entries] == [
        "redirect", "not_found", "bad_request", "bad_request", "bad_request", "client_closed",
        "timeout"]
    assert counts == {"redirect": 1, "not_found": 1, "bad_request": 3, "client_closed": 1,
                      "timeout": 1}
    for e in entries:
        assert set(e) == ACCESS_FIELDS | {"host"}, e
        assert e["mode"] == "http" and e["sni"] is None and e["backend"] is None
        assert e["client"] == "127.0.0.1" and e["time"].endswith("Z") and e["duration"] >= 0
    redirect, not_found = entries[:2]
    assert redirect["host"] == fqdn("web") and redirect["route"] == "web"
    assert redirect["bytes_in"] > 40 and redirect["bytes_out"] > 100
    assert not_found["host"] == fqdn("nobody") and not_found["route"] is None
    assert all(e["host"] is None and e["route"] is None for e in entries[2:])
    assert entries[-1]["duration"] >= 0.9 and entries[-1]["bytes_in"] == 16
    text = log_path.read_text()
    assert "evil" not in text and "token=x" not in text  # no target, no unchecked Host
