"""Tunnels in a fleet: three real gateways on one PostgreSQL, a real ``webgateway tunnel`` node.

A tunnel name is answered by every gateway's DNS only with the addresses of the gateways
holding a live tunnel for it (DNS steering), so a client that follows DNS always lands on a
gateway that can serve it. Measured: the failover of a node from one gateway to another
(every gateway's DNS answers the new one only; curl through the steered address gets 200),
and a gateway killed with ``-9`` while holding a tunnel (dropped after ``stale_after``).
``webgateway check --fleet`` and ``webgateway status`` are run against the same fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.rdatatype

from tests.gateway import CLI
from tests.integration.proxy_harness import BackendServer, run
from tests.integration.test_fleet import ADDRS, Fleet, Member, ask, start_fleet, until
from tests.postgres import Postgres
from tests.support import ZONE

TUNNEL_TTL = 5
ROUNDS = 6
#: A gateway killed without a goodbye is dropped after this (scaled down from 5 s / 20 s).
FLEET = {"heartbeat": 0.5, "stale_after": 2.0}


class Node:
    """A ``webgateway tunnel`` process dialling some of the fleet's gateways, stopped by PID."""

    def __init__(self, fleet: Fleet, token: str, to: str, *gws: Member) -> None:
        self.cmd = [sys.executable, "-m", "webgateway.cli", "tunnel", "--server-name", ZONE,
                    "--ca", str(fleet.ca_file), "--name", "hidden", "--token", token,
                    "--to", to, "--log-level", "debug"]
        for m in gws:
            self.cmd += ["--gateway", f"{m.addr}:{m.https_port}"]
        self.log = fleet.ca_file.parent / f"node-{os.urandom(3).hex()}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=asyncio.subprocess.DEVNULL, stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=asyncio.subprocess.STDOUT)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)

    async def up(self) -> bool:
        return "tunnel for hidden is up" in self.log.read_text(errors="replace")


async def tunnel_addresses(m: Member) -> tuple[set[str], int]:
    """The A records ``m``'s DNS gives for the tunnel name, and their TTL."""
    r = await ask(m, f"hidden.{ZONE}")
    rrs = [rr for rr in r.answer if rr.rdtype == dns.rdatatype.A]
    return ({rd.address for rr in rrs for rd in rr}, rrs[0].ttl if rrs else -1)


def steered_to(fleet: Fleet, want: set[str]) -> object:
    async def probe() -> bool:
        got = await asyncio.gather(*(tunnel_addresses(m) for m in fleet.members))
        return all(addrs == want for addrs, _ in got)
    return probe


async def curl_steered(fleet: Fleet, via: Member) -> int:
    """Resolve the tunnel name through ``via``'s DNS and GET it at the address it gives."""
    addrs, _ = await tunnel_addresses(via)
    addr = sorted(addrs)[0]
    port = next(m.https_port for m in fleet.members if m.addr == addr)
    rc, out, _ = await run(
        "curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}",
        "--cacert", str(fleet.ca_file), "--resolve", f"hidden.{ZONE}:{port}:{addr}",
        f"https://hidden.{ZONE}:{port}/")
    return int(out or 0) if rc == 0 else 0


@contextlib.asynccontextmanager
async def tunnel_fleet(tmp_path: Path, pg: Postgres) -> AsyncIterator[tuple[Fleet, str, str]]:
    """The fleet, owner alice with the tunnel name ``hidden``; yields its token and backend."""
    backend = BackendServer("hidden-backend", "127.0.0.1")
    await backend.start()
    try:
        async with start_fleet(tmp_path, pg, fleet=FLEET,
                               zone_keys={"tunnel_ttl": TUNNEL_TTL}) as fleet:
            gw1 = fleet.members[0]
            st, owner = await fleet.call(gw1, "POST", "/v1/owners", gw1.admin, {"name": "alice"})
            assert st == 201, owner
            st, name = await fleet.call(gw1, "PUT", "/v1/names/hidden", owner["token"],
                                        {"tunnel": True})
            assert st == 201, name
            yield fleet, str(name["tunnel_token"]), backend.addr
    finally:
        await backend.close()


def cli_out(*args: str) -> tuple[int, str]:
    import subprocess

    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


async def test_tunnel_failover_steers_every_gateways_dns(
        tmp_path: Path, postgres_server: Postgres) -> None:
    async with tunnel_fleet(tmp_path, postgres_server) as (fleet, token, backend):
        gw1, gw2, gw3 = fleet.members
        # the registry: every gateway, its own address, nothing held yet
        st, view = await fleet.call(gw3, "GET", "/v1/fleet", gw3.admin)
        assert st == 200, view
        assert sorted((g["ipv4"], g["stale"], g["tunnels"]) for g in view["gateways"]) == [
            ([a], False, []) for a in ADDRS]
        st, _ = await fleet.call(gw3, "GET", "/v1/fleet", "wg_not-the-admin")
        assert st == 401
        # no tunnel anywhere: answered as today (every gateway), with the short TTL
        assert await tunnel_addresses(gw3) == (set(ADDRS), TUNNEL_TTL)

        node = Node(fleet, token, backend, gw1)
        await node.start()
        nodes = [node]
        try:
            await until(node.up, 15, step=0.05)
            await until(steered_to(fleet, {gw1.addr}), 2)
            await until(lambda: _is(curl_steered(fleet, gw3), 200), 5, step=0.05)

            code, out = await asyncio.to_thread(
                cli_out, "check", "--fleet", "--config", str(gw2.config))
            assert code == 0, out
            oks = [line for line in out.splitlines() if line.startswith("ok   gateway ")]
            assert len(oks) == 3, out
            serial = oks[0].split(" serial ")[1].split(";")[0]
            cert = oks[0].split(" cert ")[1].split(";")[0]
            assert all(f" serial {serial};" in line and f" cert {cert};" in line
                       for line in oks), out
            code, out = await asyncio.to_thread(cli_out, "status", "--config", str(gw1.config))
            assert "GATEWAY" in out and "TUNNELS" in out, out
            rows = {line.split()[0]: line.split()[-2:] for line in out.splitlines()
                    if line.startswith(tuple(_id(m) for m in fleet.members))}
            assert rows == {_id(gw1): ["ok", "hidden"], _id(gw2): ["ok", "-"],
                            _id(gw3): ["ok", "-"]}, out

            # failover, back and forth: kill the node's tunnel to one gateway, connect it
            # to the other
            dns_after_up, ok_after_up, dns_after_kill, total = [], [], [], []
            holder, other = gw1, gw2
            for _ in range(ROUNDS):
                t_kill = time.monotonic()
                await nodes[-1].kill()
                await until(steered_to(fleet, set(ADDRS)), 2, step=0.002)
                t_fallback = time.monotonic()
                nxt = Node(fleet, token, backend, other)
                nodes.append(nxt)
                await nxt.start()
                await until(nxt.up, 15, step=0.005)
                t_up = time.monotonic()
                await until(steered_to(fleet, {other.addr}), 2, step=0.002)
                t_dns = time.monotonic()
                await until(lambda: _is(curl_steered(fleet, gw3), 200), 5, step=0.01)
                t_ok = time.monotonic()
                dns_after_kill.append(t_fallback - t_kill)
                dns_after_up.append(t_dns - t_up)
                ok_after_up.append(t_ok - t_up)
                total.append(t_ok - t_kill)
                holder, other = other, holder
            ms = lambda xs: (f"p50 {statistics.median(xs) * 1000:.0f} ms,"  # noqa: E731
                             f" max {max(xs) * 1000:.0f} ms")
            print(f"\nfleet tunnel failover over {ROUNDS} rounds (3 gateways, PostgreSQL):"
                  f"\n  node killed -> every gateway's DNS answers all gateways: "
                  f"{ms(dns_after_kill)}"
                  f"\n  new tunnel up -> every gateway's DNS answers only its gateway: "
                  f"{ms(dns_after_up)}"
                  f"\n  new tunnel up -> curl through the steered address gets 200: "
                  f"{ms(ok_after_up)}"
                  f"\n  node killed -> 200 again (node start-up included): {ms(total)}")
            assert max(dns_after_up) < 1.0 and max(dns_after_kill) < 1.0
        finally:
            for n in nodes:
                await n.kill()
        for m in fleet.members:
            assert "Traceback" not in m.proc.log.read_text()


async def test_a_gateway_killed_while_holding_a_tunnel_is_dropped(
        tmp_path: Path, postgres_server: Postgres) -> None:
    async with tunnel_fleet(tmp_path, postgres_server) as (fleet, token, backend):
        gw1, gw2, gw3 = fleet.members
        node = Node(fleet, token, backend, gw1, gw2)
        await node.start()
        try:
            await until(steered_to(fleet, {gw1.addr, gw2.addr}), 15, step=0.02)
            gw2.proc.stop(signal.SIGKILL)
            t0 = time.monotonic()
            alive = [gw1, gw3]

            async def only_gw1() -> bool:
                got = await asyncio.gather(*(tunnel_addresses(m) for m in alive))
                return all(a == {gw1.addr} for a, _ in got)

            await until(only_gw1, 6, step=0.01)
            took = time.monotonic() - t0
            print(f"\ngateway kill -9 while holding a tunnel -> dropped from every answer in"
                  f" {took * 1000:.0f} ms (heartbeat {FLEET['heartbeat']} s, stale_after"
                  f" {FLEET['stale_after']} s)")
            assert took < FLEET["stale_after"] + 2 * FLEET["heartbeat"] + 1
            st, view = await fleet.call(gw1, "GET", "/v1/fleet", gw1.admin)
            assert st == 200 and [g["id"] for g in view["gateways"]] == sorted(
                [_id(gw1), _id(gw3)]), view
            code, out = await asyncio.to_thread(
                cli_out, "check", "--fleet", "--config", str(gw3.config))
            assert code == 0 and out.count("ok   gateway ") == 2, out
            assert await _is(curl_steered(fleet, gw3), 200)
        finally:
            await node.kill()


def _id(m: Member) -> str:
    import socket

    return f"{socket.gethostname()}/{m.addr}:{m.https_port}"


async def _is(coro: object, want: int) -> bool:
    return await coro == want  # type: ignore[misc]
