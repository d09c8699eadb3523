"""What option (b) of "tunnels in a fleet" would cost: one gateway forwarding to another.

Option (b) lets any gateway take a tunnel name's connection and forward it, raw TLS, to the
gateway holding the tunnel. Measured here as exactly that hop on loopback: gateway A routes
``hidden`` as passthrough to gateway B's HTTPS listener, B terminates TLS and forwards to the
backend (as it would to a tunnel stream). Each round makes new HTTPS connections with curl
(TTFB = ``time_starttransfer``), alternating ``direct`` (client -> B) and ``hop``
(client -> A -> B), and the CPU time of this process (both gateways and the backend run in
it; curl does not) per connection. Loopback has no RTT: on a real fleet the hop also adds
one round trip between two gateways (often 10-100 ms between regions) to every new
connection, and every byte crosses two gateways.

    flock /tmp/wg-bench.lock .venv/bin/python -m bench.fleet.hop [CONNECTIONS]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.proxy_harness import BackendServer, Gateway, fqdn, gateway, run
from webgateway.model import TlsMode


async def ttfb(gw: Gateway, ca: Path) -> float:
    host = fqdn("hidden")
    rc, out, err = await run(
        "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{time_starttransfer}",
        "--cacert", str(ca), "--resolve", f"{host}:{gw.https_port}:127.0.0.1",
        f"https://{host}:{gw.https_port}/")
    if rc != 0:
        raise RuntimeError(err.decode())
    return float(out)


async def main(n: int) -> None:
    backend = BackendServer("hidden-backend", "127.0.0.1")
    await backend.start()
    with tempfile.TemporaryDirectory() as a_dir, tempfile.TemporaryDirectory() as b_dir:
        async with gateway(Path(b_dir)) as b, gateway(Path(a_dir)) as a:
            await b.certificate("zone", f"*.{b.proxy.config.zone.name}")
            await b.name("hidden", backend.addr)
            await a.name("hidden", f"127.0.0.1:{b.https_port}", tls=TlsMode.PASSTHROUGH)
            times: dict[str, list[float]] = {"direct": [], "hop": []}
            cpu: dict[str, float] = {"direct": 0.0, "hop": 0.0}
            for gw in (b, a):  # warm-up
                await ttfb(gw, b.ca_file)
            for i in range(n):
                for gw, kind in ((b, "direct"), (a, "hop")) if i % 2 else ((a, "hop"),
                                                                          (b, "direct")):
                    c0 = time.process_time()
                    times[kind].append(await ttfb(gw, b.ca_file))
                    cpu[kind] += time.process_time() - c0
    await backend.close()
    print(f"bench/fleet/hop.py: {n} new HTTPS connections per path, curl TTFB and this"
          f" process's CPU (gateways + backend), load average {os.getloadavg()[0]:.2f}")
    print("| path | TTFB p50 | TTFB p99 | CPU per connection |")
    print("|---|---|---|---|")
    for kind, xs in times.items():
        q = statistics.quantiles(xs, n=100, method="inclusive")
        print(f"| {kind} | {q[49] * 1000:.2f} ms | {q[98] * 1000:.2f} ms |"
              f" {cpu[kind] / n * 1e6:.0f} µs |")
    extra = statistics.median(times["hop"]) - statistics.median(times["direct"])
    print(f"hop - direct: CPU {(cpu['hop'] - cpu['direct']) / n * 1e6:.0f} µs per connection,"
          f" TTFB p50 +{extra * 1000:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
