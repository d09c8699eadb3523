"""Python and C calls per new connection in the proxy, counted in the proxy process.

Runs ``webgateway proxy`` in this process under ``sys.setprofile`` for SECONDS while
something else sends the load (``bench/proxy/hs_client.py``), then prints the calls per
connection (a connection counted when its pair is accounted for, ``Engine.pair_done``)
and the most frequent functions. Counting slows the proxy several times over: read the
counts, not the rates. A Python call costs the proxy ~0.5-1 µs with its body, so this is
the map of what a change per connection can still save.
usage: calls.py CONFIG SECONDS [TOP=60]
       (CONFIG: e.g. the bench's /tmp/wgbench-proxy/run/wg/webgateway.toml)
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

import proxy.engine
from webgateway.config import load_config
from webgateway.supervisor import serve

counts: collections.Counter[tuple[str, str]] = collections.Counter()
done = [0]


def profile(frame: types.FrameType, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        counts["py", f"{Path(code.co_filename).name}:{code.co_name}"] += 1
    elif event == "c_call":
        counts["c", getattr(arg, "__qualname__", str(arg))] += 1


def instrument() -> None:
    inner: Callable[..., None] = proxy.engine.Engine.pair_done

    def counted(self: proxy.engine.Engine, *args: Any, **kwargs: Any) -> None:
        done[0] += 1
        inner(self, *args, **kwargs)

    proxy.engine.Engine.pair_done = counted  # type: ignore[method-assign]


async def main(config: Path, seconds: float, top: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(load_config(config), ["proxy"], stop))
    await asyncio.sleep(1.0)
    print("measuring", flush=True)
    done[0] = 0
    sys.setprofile(profile)
    threading.setprofile(profile)
    await asyncio.sleep(seconds)
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    n = done[0]
    stop.set()
    await task
    if not n:
        print("no connection was served: send load while it measures")
        return
    py = sum(v for (kind, _), v in counts.items() if kind == "py")
    c = sum(v for (kind, _), v in counts.items() if kind == "c")
    print(f"{n} connections; per connection: {py / n:.1f} Python calls, {c / n:.1f} C calls")
    for (kind, name), v in counts.most_common(top):
        print(f"{v / n:7.2f} {kind:2} {name}")


if __name__ == "__main__":
    instrument()
    uvloop.run(main(Path(sys.argv[1]), float(sys.argv[2]),
                    int(sys.argv[3]) if len(sys.argv) > 3 else 60))
