"""Stopping a service's background task: cancel it and wait until it has unwound.

Waiting matters: a task still running after ``stop()`` returns can write to a closed
socket or store.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to stop) and wait for it; its cancellation is not
    re-raised, any other error is."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
