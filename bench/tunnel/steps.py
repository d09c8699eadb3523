"""Where a new tunnel stream's first-byte time goes: timestamps in every process, one table.

Starts a backend, ``webgateway run`` and ``webgateway tunnel`` as separate processes (the
real shape: two event loops), each with a few wrapped methods that append
``CLOCK_MONOTONIC`` timestamps (one clock for every process) to a file; then makes N new
connections one after the other (TLS, one 1 KiB GET, ``Connection: close``) and prints the
median and p90 of each step between the client's TLS handshake and its first response
byte, plus how many streams had a replacement dial (the node's TLS handshake to the
gateway) running while they were served. Every process started here is stopped by PID.
usage: .venv/bin/python bench/tunnel/steps.py [N=200]
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

now = time.monotonic_ns
ROOT = Path(__file__).resolve().parents[2]
BODY = os.urandom(1024)

# ------------------------------------------------------------------ inside gateway and node
_log: list[str] = []


def mark(event: str) -> None:
    _log.append(f"{event} {now()}")


def wrap(obj: Any, name: str, before: Callable[..., None] | None = None,
         after: Callable[..., None] | None = None) -> None:
    inner: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        out = inner(*args, **kwargs)
        if after is not None:
            after(out, *args, **kwargs)
        return out

    setattr(obj, name, wrapper)


def instrument(role: str) -> None:
    from proxy.splice import Half
    from tunnel import wire

    def received(out: list[wire.Event], conn: wire.Connection, data: bytes) -> None:
        for ev in out:
            if ev == wire.OPEN:
                mark("n_open_rx")

    def first(half: Half, data: bytes) -> None:
        if half.nbytes == 0:
            sp = half.splice
            tunnel_side = sp.backend if role == "gateway" else sp.client
            mark(f"{role[0]}_first_{'tunnel' if half is tunnel_side else 'other'}")

    wrap(wire.Connection, "receive", after=received)
    wrap(wire.Connection, "open", before=lambda c, *a: mark("g_open_tx"))
    wrap(Half, "data_received", before=first)
    if role == "gateway":
        import weakref

        from proxy.pair import TunnelPair
        from tunnel.gateway import Tunnels
        for method in ("open_now", "open"):  # open_now first: the pooled case takes no task
            wrap(Tunnels, method, before=lambda *a, **k: mark("g_open_called"))
        # a terminated tunnel name is a flat TunnelPair at the gateway (no Half there)
        marked: weakref.WeakSet[TunnelPair] = weakref.WeakSet()

        def client_bytes(_: object, pair: TunnelPair, *a: object) -> None:
            if pair.carried()[0] and pair not in marked:
                marked.add(pair)
                mark("g_first_other")

        wrap(TunnelPair, "_reach_backend", after=client_bytes)
        wrap(TunnelPair, "_from_client", after=client_bytes)
        wrap(TunnelPair, "data_received",
             before=lambda pair, data: pair.carried()[1] or mark("g_first_tunnel"))
    else:
        from proxy.splice import Splice
        from tunnel import node
        wrap(Splice, "link", before=lambda *a: mark("n_backend_connected"))
        # the request came with OPEN: the node writes it to the spare before any Half sees it
        wrap(node.NodeConn, "_open", before=lambda c, first: first and mark("n_first_tunnel"))
        wrap(node.NodeConn, "connection_made", before=lambda *a: mark("n_dial_tls_done"))
        wrap(wire.Connection, "hello", before=lambda *a: None)
        wrap(node.GatewayLink, "_one", before=lambda *a: mark("n_dial_start"))


def serve_instrumented(role: str, out: Path, argv: list[str]) -> None:
    instrument(role)

    def dump(*_: object) -> None:
        out.write_text("\n".join(_log) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    from webgateway.cli import main
    main(argv)


# ------------------------------------------------------------------ the other processes
async def backend(port: int) -> None:
    """HTTP/1.1 on loopback: every request gets 1 KiB, then the connection closes."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n" + BODY)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", port)
    async with srv:
        await srv.serve_forever()


def client(port: int, ca: Path, n: int, host: str = "viatunnel.gw.test",
           ) -> list[tuple[int, int, int]]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = f"GET /1k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    out = []
    for _ in range(n):
        t0 = now()
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            t1 = now()
            s.sendall(req)
            s.recv(1)
            t2 = now()
            while s.recv(65536):
                pass
        out.append((t0, t1, t2))
        time.sleep(0.005)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def events(path: Path) -> dict[str, list[int]]:
    ev: dict[str, list[int]] = collections.defaultdict(list)
    for line in path.read_text().split("\n"):
        if line:
            k, t = line.split()
            ev[k].append(int(t))
    return ev


def after(ts: list[int], t: int) -> int | None:
    return next((x for x in ts if x >= t), None)


def report(samples: list[tuple[int, int, int]], g: dict[str, list[int]],
           nd: dict[str, list[int]]) -> None:
    steps = [
        ("client TLS handshake with the proxy", "c0", "c_tls"),
        ("proxy: handshake done -> tunnel open() called", "c_tls", "g_open_called"),
        ("request at the gateway", "c_tls", "g_first_other"),
        ("gateway: open() -> OPEN written", "g_open_called", "g_open_tx"),
        ("OPEN gateway -> node (TLS, two loops)", "g_open_tx", "n_open_rx"),
        ("node: OPEN -> backend connected", "n_open_rx", "n_backend_connected"),
        ("request: first tunnel bytes at the node", "c_tls", "n_first_tunnel"),
        ("request gateway -> node", "g_first_other", "n_first_tunnel"),
        ("node: request -> backend connected", "n_first_tunnel", "n_backend_connected"),
        ("node: request -> backend's first byte", "n_first_tunnel", "n_first_other"),
        ("response node -> gateway", "n_first_other", "g_first_tunnel"),
        ("gateway -> client's first byte", "g_first_tunnel", "c_first"),
        ("TOTAL: TLS done -> first byte", "c_tls", "c_first"),
    ]
    rows: dict[str, list[float]] = collections.defaultdict(list)
    busy = 0
    for c0, c_tls, c_first in samples:
        t = {"c0": c0, "c_tls": c_tls, "c_first": c_first}
        for src, k in ((g, "g_open_called"), (g, "g_open_tx"), (g, "g_first_other"),
                       (g, "g_first_tunnel"), (nd, "n_open_rx"), (nd, "n_backend_connected"),
                       (nd, "n_first_tunnel"), (nd, "n_first_other")):
            v = after(src.get(k, []), c0)  # the gateway may finish its handshake first
            if v is not None and v <= c_first + 50_000_000:
                t[k] = v
        for label, a, b in steps:
            if a in t and b in t and t[b] >= t[a]:
                rows[label].append((t[b] - t[a]) / 1e6)
        if any(c_tls <= x <= c_first for x in nd.get("n_dial_start", []) +
               nd.get("n_dial_tls_done", [])):
            busy += 1
    print(f"{'step':48} {'p50 ms':>8} {'p90 ms':>8}  n")
    for label, _, _ in steps:
        v = sorted(rows.get(label, []))
        if v:
            print(f"{label:48} {statistics.median(v):8.3f} {v[int(len(v) * 0.9)]:8.3f}  {len(v)}")
    print(f"streams with a replacement dial under way while served: {busy} of {len(samples)}")


def main(n: int) -> None:
    py = sys.executable
    state = Path(tempfile.mkdtemp(prefix="wg-tunnel-steps."))
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([py, *args], cwd=ROOT, stdout=open(state / f"{len(procs)}.log", "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        bport = free_port()
        start(__file__, "backend", str(bport))
        subprocess.run([py, "bench/tunnel/prepare.py", str(state), str(bport), "1", "0"],
                       cwd=ROOT, check=True)
        env = dict(line.split("=") for line in (state / "ports.env").read_text().split())
        https = int(env["HTTPS"])
        gw = start(__file__, "gateway", str(state / "g.events"), "run", "--config",
                   str(state / "webgateway.toml"))
        time.sleep(2.5)
        node = start(__file__, "node", str(state / "n.events"), "tunnel", "--gateway",
                     f"127.0.0.1:{https}", "--server-name", "gw.test", "--ca",
                     str(state / "ca.pem"), "--name", "viatunnel", "--token-file",
                     str(state / "token"), "--to", f"127.0.0.1:{bport}", *sys.argv[2:])
        time.sleep(2.0)
        client(https, state / "ca.pem", 20)  # warm-up: sessions, code paths
        time.sleep(0.5)
        samples = client(https, state / "ca.pem", n)
        time.sleep(0.3)
        direct = sorted((c - t) / 1e6 for _, t, c in client(https, state / "ca.pem", n,
                                                              "direct.gw.test"))
        for p, f in ((gw, "g.events"), (node, "n.events")):
            p.send_signal(signal.SIGUSR1)
            for _ in range(100):
                if (state / f).exists():
                    break
                time.sleep(0.05)
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        print(f"# {n} new connections one after the other; load average "
              f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
        report(samples, events(state / "g.events"), events(state / "n.events"))
        print(f"{'direct (no tunnel): TLS done -> first byte':48} "
              f"{statistics.median(direct):8.3f} {direct[int(len(direct) * 0.9)]:8.3f}  {n}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "200"
    if what == "backend":
        import uvloop
        uvloop.run(backend(int(sys.argv[2])))
    elif what in ("gateway", "node"):
        serve_instrumented(what, Path(sys.argv[2]), sys.argv[3:])
    else:
        main(int(what))
