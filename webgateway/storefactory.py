"""The one place a store is built: SQLite for one gateway, PostgreSQL for a fleet.

Every process that needs the store (the supervisor, dnsd and proxy worker processes, the
CLI's ``owner add --config``) calls ``open_store`` with the validated ``[store]`` section,
so the backend, ``poll_interval`` and ``timeout`` are chosen in one place.
"""

from __future__ import annotations

import logging

from webgateway.config import ConfigError, StoreConfig
from webgateway.keyseal import KeySeal, KeySealError, check_store
from webgateway.store import Store
from webgateway.zonekeys import KeyMaterialError, seal_stored

log = logging.getLogger(__name__)


async def open_store(config: StoreConfig) -> Store:
    """The configured store, opened (and migrated to this build's schema); ConfigError
    when ``key_file`` does not open the private keys it holds."""
    store: Store
    if config.url:
        from webgateway.pg_store import PgStore

        store = PgStore(config.url, config.poll_interval, config.timeout)
    else:
        from webgateway.sqlite_store import SqliteStore

        store = SqliteStore(config.path, config.poll_interval)
    await store.open()
    try:
        seal = KeySeal(config.key)
        await check_store(store, seal)
        try:
            await seal_stored(store, seal)
        except KeyMaterialError as e:  # dnsd reports it and serves unsigned; others go on
            log.error("dnssec: %s", e)
    except KeySealError as e:
        await store.close()
        raise ConfigError("store.key_file", str(e)) from None
    except BaseException:
        await store.close()
        raise
    return store
