"""The API as a supervised service: the REST routes and the dashboard on one listener.

Kept apart from ``webgateway.api`` so the imports run one way: the dashboard builds on
the API's views, and this module puts both on one aiohttp application.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from webgateway.api import Api
from webgateway.config import Config, ConfigError
from webgateway.dashboard import Dashboard
from webgateway.store import Store
from webgateway.tokens import load_or_create_token

log = logging.getLogger(__name__)


class ApiService:
    name = "api"

    def __init__(self, config: Config, store: Store, registry: CollectorRegistry) -> None:
        self.config = config
        self.api = Api(config, store, registry)
        Dashboard(self.api).register(self.api.app)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.api.admin_hash = self._token("api.admin_token_file", self.config.api.admin_token_file)
        if self.config.api.metrics_token_file is not None:
            self.api.metrics_hash = self._token("api.metrics_token_file",
                                                self.config.api.metrics_token_file)
        self.runner = web.AppRunner(self.api.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        addr = self.config.api.listen
        site = web.TCPSite(self.runner, str(addr.host), addr.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            raise ConfigError("api.listen", f"cannot listen on {addr}: {e.strerror}") from None
        self.api.live.start()

    @staticmethod
    def _token(key: str, path: Path) -> str:
        """The hash of the token in ``path``, made (0600) on first start."""
        try:
            digest, created = load_or_create_token(path)
        except (OSError, ValueError) as e:
            raise ConfigError(key, str(e)) from None
        if created:
            log.info("%s: token written to %s (mode 0600)", key, path)
        return digest

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        assert self.runner is not None
        for site in self.runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        raise RuntimeError("the API is not listening")

    async def stop(self) -> None:
        self.api.live.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def build(config: Config, store: Store, registry: CollectorRegistry) -> ApiService:
    return ApiService(config, store, registry)
