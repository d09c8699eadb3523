"""Hold N idle tunnels open against a gateway (N nodes' worth, one connection each).

Each connection does what ``webgateway tunnel --pool 1`` does up to the point where it
waits: TLS with ALPN webgateway-tunnel/1, HELLO with its name's token, ACCEPT. Then it
sits (pinging like a node) until killed, so the gateway's RSS can be read.
usage: python bench/tunnel/idle.py HTTPS_PORT CA_FILE TOKENS_FILE READY_FILE
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from pathlib import Path

from tunnel import wire


async def one(port: int, ctx: ssl.SSLContext, label: str, token: str) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="gw.test")
    conn = wire.Connection(wire.Role.NODE)
    w.write(conn.hello(label, token, os.urandom(wire.SESSION_BYTES)))
    events = conn.receive(await r.read(64))
    if events != [wire.ACCEPTED]:
        raise RuntimeError(f"{label}: {events}")
    while True:
        await asyncio.sleep(10)
        w.write(conn.ping())
        conn.receive(await r.read(64))


async def main(port: int, ca: str, tokens: Path, ready: Path) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols([wire.ALPN])
    toks = tokens.read_text().split()
    held = []
    for i in range(0, len(toks), 50):  # 50 at a time: a gentle ramp
        batch = [asyncio.create_task(one(port, ctx, f"idle{j}", toks[j]))
                 for j in range(i, min(i + 50, len(toks)))]
        held += batch
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    failed = [t for t in held if t.done()]
    ready.write_text(f"{len(held) - len(failed)}\n")
    await asyncio.gather(*held)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
