"""dnsd's NOTIFY against a scripted secondary on a real UDP socket: signed, retried until a
correctly signed acknowledgement comes back (an unsigned or forged one does not count)."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from pathlib import Path

import dns.message
import dns.opcode
import dns.tsig

from tests.dnsd_harness import start
from tests.support import free_port

SECRET = bytes(range(32))
KEY = dns.tsig.Key("xfr.", SECRET, "hmac-sha256.")
FORGED = dns.tsig.Key("xfr.", bytes(32), "hmac-sha256.")


async def _receive(sock: socket.socket,
                   seconds: float) -> tuple[dns.message.Message, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), seconds)
    return dns.message.from_wire(data, keyring={KEY.name: KEY}), addr


async def test_notify_is_signed_and_retried_until_a_signed_ack(tmp_path: Path) -> None:
    port = free_port(kind=socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    d = await start(tmp_path, dns={"secondaries": [f"127.0.0.1:{port}"],
                                   "tsig": {"name": "xfr",
                                            "secret": base64.b64encode(SECRET).decode()}})
    try:
        notifier = d.svc.notifier
        assert notifier is not None
        q, addr = await _receive(sock, 3)  # the start-up NOTIFY; verified with the key
        assert q.opcode() == dns.opcode.NOTIFY and q.had_tsig
        assert q.answer[0][0].serial == d.svc.view.serial
        for bad in ("unsigned", "forged or for another request"):
            if bad == "unsigned":
                sock.sendto(_unsigned(q), addr)
            else:
                forged = dns.message.make_response(q)
                forged.use_tsig(FORGED)
                sock.sendto(forged.to_wire(), addr)
                other = dns.message.make_response(q)
                other.id ^= 1
                sock.sendto(other.to_wire(), addr)
            t0 = time.monotonic()
            q, addr = await _receive(sock, 10)  # not acknowledged: sent again, later
            assert time.monotonic() - t0 > 0.5
        assert notifier.acked == 0 and notifier.sent >= 3
        sock.sendto(dns.message.make_response(q).to_wire(), addr)
        await asyncio.sleep(0.2)
        assert notifier.acked == 1 and notifier.schedule.next_due() is None
    finally:
        sock.close()
        await d.svc.stop()
        await d.store.close()


def _unsigned(q: dns.message.Message) -> bytes:
    r = dns.message.Message(q.id)
    r.flags = q.flags | 0x8000
    r.set_opcode(dns.opcode.NOTIFY)
    r.question = list(q.question)
    return r.to_wire()
