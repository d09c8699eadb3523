"""Hostile packets against the live server: it keeps answering, and every reply is sane."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import pytest

from tests.dnsd_harness import Dns, start
from tests.hostile_dns import mutate, pointer_packet, seeds
from tests.support import ZONE


@pytest.fixture
async def d(tmp_path: Path) -> AsyncIterator[Dns]:
    g = await start(tmp_path, dns={"tcp_idle_timeout": 1.0})
    yield g
    await g.svc.stop()
    await g.store.close()


def corpus(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    starts = seeds()
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(pointer_packet(rnd))
        else:
            out.append(mutate(rnd, rnd.choice(starts)))
    return out


def _udp_blast(port: int, packets: list[bytes]) -> tuple[int, int]:
    """Send in bursts of 50 and collect replies; returns (replies, bad replies)."""
    replies = bad = 0
    ids: set[bytes] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for i in range(0, len(packets), 50):
            burst = packets[i : i + 50]
            expect = [p[:2] for p in burst if len(p) >= 12 and not p[2] & 0x80]
            ids.update(expect)
            for p in burst:
                s.sendto(p, ("127.0.0.1", port))
            for _ in range(len(expect)):
                try:
                    reply = s.recv(65535)
                except TimeoutError:
                    break
                replies += 1
                if reply[:2] not in ids or not reply[2] & 0x80:
                    bad += 1
    return replies, bad


async def test_udp_fuzz_keeps_serving(d: Dns) -> None:
    packets = corpus(6000, 1)
    replies, bad = await asyncio.to_thread(_udp_blast, d.port, packets)
    assert bad == 0 and replies > 3000
    r = await d.q(f"alice.{ZONE}")
    assert r.answer


async def test_tcp_fuzz_and_hostile_framing(d: Dns) -> None:
    packets = corpus(400, 2)
    reader, writer = await asyncio.open_connection(d.host, d.port)
    wanted = [p for p in packets if len(p) >= 12 and not p[2] & 0x80]
    writer.write(b"".join(len(p).to_bytes(2, "big") + p for p in wanted))
    await writer.drain()
    for p in wanted:
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
        reply = await asyncio.wait_for(reader.readexactly(size), 5)
        assert reply[:2] == p[:2] and reply[2] & 0x80
    writer.close()
    # a frame that promises 65535 bytes and never sends them: closed by the idle timeout
    reader, writer = await asyncio.open_connection(d.host, d.port)
    writer.write(b"\xff\xff" + b"x" * 100)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # an empty frame (no header at all): the server hangs up rather than guess
    reader, writer = await asyncio.open_connection(d.host, d.port)
    writer.write(b"\x00\x00")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    m = dns.message.make_query(f"alice.{ZONE}", "A")
    r = await d.q(f"alice.{ZONE}", tcp=True)
    assert r.answer and m.question == r.question
