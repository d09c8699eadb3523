"""The ACME thread pool: N threads taking jobs oldest-order-first, not first-come.

With a FIFO pool, 200 orders started together advance in lock-step (every order's next
request queues behind every other order's) and all finish at the very end. Serving the
requests of the order that started first keeps the same throughput while orders finish
one after another, so the median latency halves and the first certificates arrive at once.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any


class PriorityPool:
    def __init__(self, threads: int, name: str) -> None:
        self._heap: list[tuple[float, int, concurrent.futures.Future[Any], Callable[[], Any]]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, priority: float, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` in a worker; lower ``priority`` runs first (ties: submission order)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            heapq.heappush(self._heap, (priority, next(self._seq), fut, fn))
            self._cv.notify()
        return fut

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                _, _, fut, fn = heapq.heappop(self._heap)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as e:
                fut.set_exception(e)
            else:
                fut.set_result(result)

    def shutdown(self) -> None:
        """Cancel queued jobs; running ones finish in their (daemon) threads."""
        with self._cv:
            self._closed = True
            for _, _, fut, _ in self._heap:
                fut.cancel()
            self._heap.clear()
            self._cv.notify_all()
