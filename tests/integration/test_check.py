"""``webgateway check`` against a real dnsd on a high loopback port (not 53)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.gateway import cli, write_config
from tests.support import free_port, services
from webgateway.config import load_config


async def test_check_asks_our_dns_on_its_configured_port(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    cfg = load_config(path)
    port = cfg.dns.listen[0].port
    assert port != 53
    async with services(cfg, "dnsd") as gw:
        serial = await gw.store.serial()
        # the resolver is our own dnsd: it answers for the zone, refuses everything else
        r = await asyncio.to_thread(cli, "check", "--config", str(path),
                                    "--resolver", f"127.0.0.1:{port}")
        dead = free_port(host="127.0.0.1")
        r_dead = await asyncio.to_thread(cli, "check", "--config", str(path), "--port",
                                         str(dead), "--resolver", f"127.0.0.1:{port}")
    out = r.stdout.splitlines()
    assert f"ok   SOA serial {serial} on every name server" in out, r.stdout
    assert f"ok   the resolver reaches gw.test (SOA serial {serial})" in out
    # no parent can be found through a resolver that is not recursive: said plainly
    assert r.returncode == 1
    fixes = [line for line in out if line.startswith("FIX")]
    assert fixes and any("parent" in line for line in fixes)
    # --port wins over the config; nothing listening there is told as such
    assert r_dead.returncode == 1
    assert (f"FIX  our name server ns1.gw.test (127.0.0.1:{dead}) does not answer for gw.test:"
            in r_dead.stdout), r_dead.stdout
    assert "no answer within 3 s" in r_dead.stdout
    for text in (r.stdout + r.stderr, r_dead.stdout + r_dead.stderr):
        assert "Traceback" not in text and "never happen" not in text
        assert "Do53" not in text and "answered" not in text  # dnspython's own wording
