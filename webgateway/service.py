"""What the supervisor needs from dnsd, certd, the proxy and the API.

Each package exposes ``build(config, store, registry) -> Service``; ``start`` binds its
sockets (raising ``ConfigError(key, reason)`` when one cannot be bound, so start-up
stops with the key to fix) and ``stop`` closes them and waits for its tasks.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from prometheus_client import CollectorRegistry

from webgateway.config import Config
from webgateway.store import Store


class Service(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class ServiceFactory(Protocol):
    def __call__(self, config: Config, store: Store, registry: CollectorRegistry) -> Service: ...


def load_factory(spec: str) -> ServiceFactory:
    """``"package.module:function"`` -> the factory it names, imported only now."""
    module, attr = spec.split(":")
    built: ServiceFactory = getattr(importlib.import_module(module), attr)
    return built
