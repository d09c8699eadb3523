"""A big AXFR over a real TCP socket: streamed with back-pressure while queries go on."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.tsig

from tests.dnsd_harness import start
from tests.support import ZONE
from webgateway.model import Name, Snapshot

SECRET = bytes(range(32))
NAMES = 100_000


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def _transfer(port: int, stall: float, stalled: list[float]) -> tuple[int, int]:
    """Signed AXFR; read one message, stop reading for ``stall`` s, then read the rest.
    The first messages' chained TSIG is verified with dnspython (too slow for 200,000
    records: the unit tests verify whole chains); the rest are counted from headers until
    the opening SOA record shows up again. Returns (messages, records)."""
    key = dns.tsig.Key("xfr.", SECRET, "hmac-sha256.")
    q = dns.message.make_query(ZONE, "AXFR", use_edns=False)
    q.use_tsig(key)
    data = q.to_wire()
    ctx = None
    count = records = soas = 0
    soa = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(struct.pack(">H", len(data)) + data)
        while soas < 2 and count < 10_000:
            (size,) = struct.unpack(">H", _recv_exact(s, 2))
            raw = _recv_exact(s, size)
            if count < 3:
                m = dns.message.from_wire(raw, keyring=q.keyring, request_mac=q.mac, xfr=True,
                                          tsig_ctx=ctx, multi=True)
                ctx = m.tsig_ctx
            if not soa:
                at = 12 + len(ZONE) + 2 + 4  # past the question
                rdlen = raw[at + 10] << 8 | raw[at + 11]
                soa = raw[at : at + 12 + rdlen]
            soas += raw.count(soa)
            count += 1
            records += raw[6] << 8 | raw[7]
            if count == 1:
                t0 = time.monotonic()
                time.sleep(stall)
                stalled.append(time.monotonic() - t0)
    return count, records


async def test_a_100k_name_axfr_streams_while_udp_answers_go_on(tmp_path: Path) -> None:
    tsig = {"name": "xfr", "secret": base64.b64encode(SECRET).decode()}
    d = await start(tmp_path, dns={"transfer_allow": ["127.0.0.0/8"], "tsig": tsig})
    try:
        snap = await d.store.snapshot()
        names = {f"n{i}": Name(f"n{i}", d.owner, ()) for i in range(NAMES)}
        # Straight into the view: the store's insert path is not what is measured here.
        d.svc.journal.load(Snapshot(snap.serial, {**snap.names, **names}, snap.domains,
                                    snap.txt, {}))
        stalled: list[float] = []
        xfr = asyncio.create_task(asyncio.to_thread(_transfer, d.port, 3.0, stalled))
        worst = 0.0
        paused = False
        for i in range(30):  # while the client does not read, queries are answered
            t0 = time.monotonic()
            r = await d.q(f"n{i * 997}.{ZONE}")
            worst = max(worst, time.monotonic() - t0)
            assert r.answer
            paused = paused or any(c.streaming is not None and c.paused
                                   for c in d.svc.tcp_conns)  # back-pressure
            await asyncio.sleep(0.02)
        assert paused and not stalled  # seen while the client still sat on its first message
        messages, records = await asyncio.wait_for(xfr, 60)
        assert records == 2 * NAMES + 13
        assert messages > 50
        assert worst < 0.5, worst
    finally:
        await d.svc.stop()
        await d.store.close()
