"""CPU per new connection of each step of the proxy, measured inside the proxy process.

Runs ``webgateway proxy`` in this process with each step wrapped in a thread-CPU timer
(``time.thread_time_ns``, so waiting and other processes do not count), for SECONDS while
something else sends the load (``bench/proxy/hs_client.py``), then prints µs per spliced
connection per step. A step's time excludes the wrapped steps it calls (a backend read
that writes TLS records counts once, under the records). "rest" is the event loop itself
(callbacks, the readiness epoll, timers) and the store's poll. The timers add
about 1 µs per wrapped call.
usage: steps.py CONFIG SECONDS   (e.g. the bench's /tmp/wgbench-proxy/run/wg/webgateway.toml)
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

import proxy.engine
import proxy.https
from proxy.pair import Pair
from webgateway.config import load_config
from webgateway.supervisor import serve

cpu: collections.Counter[str] = collections.Counter()
spliced = [0]
now = time.thread_time_ns
#: time spent in wrapped steps under the one running (so each step counts exclusively)
nested = [0]


def _charge(step: str, t: int) -> None:
    child = nested.pop()
    spent = now() - t
    cpu[step] += spent - child
    nested[-1] += spent


def timed(obj: Any, name: str, step: str) -> None:
    inner: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = now()
        nested.append(0)
        try:
            return inner(*args, **kwargs)
        finally:
            _charge(step, t)

    setattr(obj, name, wrapper)


def instrument() -> None:
    """A terminated name with TCP backends is served by ``proxy.pair.Pair``."""
    for obj, name, step in (
        (proxy.https.HttpsListener, "_accept", "accept + ClientHello peek + parse + dispatch"),
        (Pair, "__init__", "TLS object set-up"),
        (Pair, "_handshake", "TLS handshake (OpenSSL, on the socket)"),
        (Pair, "_dial", "backend connect"),
        (Pair, "_connecting", "backend connect"),
        (Pair, "_connected", "pair set-up"),
        (Pair, "_from_client", "bytes and TLS records read/written"),
        (Pair, "_send_up", "bytes and TLS records read/written"),
        (Pair, "_from_backend", "bytes and TLS records read/written"),
        (Pair, "_read_backend", "bytes and TLS records read/written"),
        (Pair, "_write_down", "bytes and TLS records read/written"),
        (Pair, "_close", "close"),
        (proxy.engine.Engine, "pair_done", "close (accounting: metrics, access log)"),
    ):
        timed(obj, name, step)
    done: Callable[..., None] = proxy.engine.Engine.pair_done

    def counted(self: proxy.engine.Engine, *args: Any, **kwargs: Any) -> None:
        spliced[0] += 1
        done(self, *args, **kwargs)

    proxy.engine.Engine.pair_done = counted  # type: ignore[method-assign]


async def main(config: Path, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(load_config(config), ["proxy"], stop))
    await asyncio.sleep(1.0)
    print("measuring", flush=True)
    cpu.clear()
    spliced[0] = 0
    t0 = now()
    await asyncio.sleep(seconds)
    total, n, steps = now() - t0, spliced[0], dict(cpu)
    stop.set()
    await task
    if not n:
        print("no connection was spliced: send load while it measures")
        return
    for step, ns in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"{ns / n / 1000:7.0f} µs  {step}")
    print(f"{(total - sum(steps.values())) / n / 1000:7.0f} µs  rest (event loop, transports, "
          "store poll)")
    print(f"{total / n / 1000:7.0f} µs  total main-thread CPU per connection ({n} connections)")


if __name__ == "__main__":
    instrument()
    uvloop.run(main(Path(sys.argv[1]), float(sys.argv[2])))
