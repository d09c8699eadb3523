"""Where certd's time goes during a bench run: wrappers installed around the calls that wait.

A profiler samples the event loop, which spends most of this run waiting; what matters is
what it waits for. So the bench wraps, for the timed run only:

- every write method of the store (count, time as the caller sees it) and its write
  transaction (count, time the connection was held: the part that is serialized);
- every HTTP request to the CA (``RetryingNetwork._send_request``: count, time);
- the DNS propagation check before a challenge is answered, and the claim's CNAME lookup;
- the CPU of Pebble and Knot (from /proc), beside this process's own.

Bench code only: nothing in certd knows about it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import certd.issuer
import certd.service
from certd.acmenet import RetryingNetwork

STORE_WRITES = ("add_txt", "remove_txt", "put_certificate", "set_domain_state", "verify_claim",
                "set_claim_detail", "put_domain", "set_meta", "delete_certificate",
                "expire_claims", "take_lease", "release_lease", "take_order_slot",
                "set_renew_at")


@dataclass
class Tally:
    n: int = 0
    seconds: float = 0.0

    def add(self, dt: float) -> None:
        self.n += 1
        self.seconds += dt


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Probe:
    def __init__(self) -> None:
        self.tallies: dict[str, Tally] = {}
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        #: key (a challenge label) -> phase -> first time it was reached (time.time())
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, key: str, phase: str) -> None:
        self.marks.setdefault(key, {}).setdefault(phase, time.time())

    def tally(self, key: str, dt: float) -> None:
        with self._lock:
            self.tallies.setdefault(key, Tally()).add(dt)

    def _patch(self, owner: Any, name: str, wrapper: Callable[[Any], Any]) -> None:
        orig = getattr(owner, name)
        setattr(owner, name, wrapper(orig))
        self._undo.append(lambda: setattr(owner, name, orig))

    def _async_timer(self, key: str) -> Callable[[Any], Any]:
        def wrap(fn: Any) -> Any:
            @functools.wraps(fn)
            async def timed(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await fn(*a, **kw)
                finally:
                    self.tally(key, time.perf_counter() - t0)
            return timed
        return wrap

    def install(self, store: Any) -> None:
        for name in STORE_WRITES:
            if hasattr(store, name):
                self._patch(store, name, self._async_timer(f"store.{name}"))
        probe = self

        def wrap_tx(fn: Any) -> Any:
            @contextlib.asynccontextmanager
            async def tx(write: bool) -> AsyncIterator[None]:
                async with fn(write):
                    t0 = time.perf_counter()
                    try:
                        yield
                    finally:
                        t1 = time.perf_counter()
                        probe.tally("store tx body" if write else "store read tx", t1 - t0)
                if write:
                    probe.tally("store tx held (body+commit)", time.perf_counter() - t0)
            return tx

        self._patch(store, "_transaction", wrap_tx)
        self._install_marks(store)

        def wrap_send(fn: Any) -> Any:
            @functools.wraps(fn)
            def send(net: Any, method: str, url: str, *a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(net, method, url, *a, **kw)
                finally:
                    probe.tally(f"CA {method}", time.perf_counter() - t0)
            return send

        self._patch(RetryingNetwork, "_send_request", wrap_send)
        self._patch(certd.issuer, "wait_propagated", self._async_timer("DNS propagation check"))
        self._patch(certd.service, "lookup_domain", self._async_timer("claim CNAME lookup"))

    def _install_marks(self, store: Any) -> None:
        """Milestones of each order, keyed by the claim's challenge label."""
        probe = self

        def after(name: str, phase: Callable[..., str | None]) -> None:
            def wrap(fn: Any) -> Any:
                @functools.wraps(fn)
                async def marked(*a: Any, **kw: Any) -> Any:
                    r = await fn(*a, **kw)
                    key = phase(r, *a, **kw)
                    if key:
                        probe.mark(key, name)
                    return r
                return marked
            return wrap

        def chal_of(name: str) -> str:
            return name.split(".", 1)[0]

        self._patch(store, "verify_claim",
                    after("verified", lambda r, chal, *_: chal if r else None))
        self._patch(store, "add_txt", after("TXT added", lambda r, fqdn, *_: chal_of(fqdn)))
        self._patch(store, "put_certificate", after(
            "order created", lambda r, cert: cert.id if cert.order_url else None))
        self._patch(store, "set_domain_state", after("domain active", lambda r, fqdn, *_: fqdn))
        self._patch(certd.issuer, "wait_propagated", after(
            "TXT propagated", lambda r, cfg, recs, *_: chal_of(next(iter(recs)))))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def rows(self) -> list[tuple[str, int, float, float]]:
        """(what, count, total s, mean ms), largest total first."""
        out = [(k, t.n, t.seconds, t.seconds * 1000 / max(t.n, 1))
               for k, t in self.tallies.items()]
        return sorted(out, key=lambda r: -r[2])
