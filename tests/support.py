"""Shared test plumbing: free loopback ports and a config for a throw-away gateway."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trustme
from prometheus_client import CollectorRegistry

from webgateway.config import Config, parse_config
from webgateway.dnsname import new_challenge_label
from webgateway.keyseal import KeySeal, slot
from webgateway.model import Certificate, CertState, Domain
from webgateway.service import Service
from webgateway.store import Store
from webgateway.storefactory import open_store
from webgateway.supervisor import factory

ZONE = "gw.test"


#: Ports this test process has handed out: the kernel may give a just-closed port again at
#: once, and two listeners of one config on the same port fail the config's own check.
_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` right now, never one handed out before
    in this process (racy against other processes, but bounded by retries)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            if (host, port) in _HANDED_OUT:
                continue
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as u:
                    u.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError("no free port found")


def fixed_label(fqdn: str) -> str:
    """A stable challenge label per domain, for pure view fixtures (the API draws random ones)."""
    return "d" + hashlib.sha256(fqdn.encode()).hexdigest()[:24]


async def held_domain(store: Store, fqdn: str, label: str, owner_id: int,
                      challenge: str | None = None) -> Domain:
    """Claim ``fqdn`` for a name and mark the claim verified, as certd does once it sees the
    owner's CNAMEs: for tests about what happens after verification (serving, routing,
    issuance). The verification itself is tested against a real DNS server."""
    claim = Domain(fqdn, label, owner_id, challenge or new_challenge_label())
    await store.put_domain(claim, 100_000)
    assert await store.verify_claim(claim.challenge_label, "verified by the test")
    held = await store.get_domain(fqdn, owner_id)
    assert held is not None
    return held


def cert_row(cid: str, domains: tuple[str, ...], leaf: trustme.LeafCert,
             seal: KeySeal | None = None, **fields: Any) -> Certificate:
    """A valid certificate row as certd stores it: the leaf's chain and its sealed key."""
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems).decode("ascii")
    key = (seal or KeySeal()).seal(slot("cert", cid), leaf.private_key_pem.bytes())
    return Certificate(cid, domains, CertState.VALID, chain, key, **fields)


def raw_config(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A minimal valid config document on loopback, with every port free; override by section."""
    doc: dict[str, Any] = {
        "zone": {
            "name": ZONE,
            "gateway_ipv4": ["127.0.0.1"],
            "gateway_ipv6": ["::1"],
            "nameservers": {f"ns1.{ZONE}": ["127.0.0.1"]},
            "ttl": 300,
            "negative_ttl": 30,
        },
        "dns": {"listen": [f"127.0.0.1:{free_port()}"]},
        "proxy": {
            "https_listen": [f"127.0.0.1:{free_port()}"],
            "http_listen": [f"127.0.0.1:{free_port()}"],
        },
        "api": {
            "listen": f"127.0.0.1:{free_port()}",
            "admin_token_file": "admin.token",
            "allow_loopback_backends": True,
        },
        "store": {"path": "var/webgateway.db", "certs_dir": "var/certs"},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    if "url" in doc["store"]:
        del doc["store"]["path"]  # PostgreSQL: the two are exclusive
    return doc


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    cfg = parse_config(raw_config(tmp_path, **sections), tmp_path)
    if not cfg.store.url:
        cfg.store.path.parent.mkdir(parents=True, exist_ok=True)
    cfg.store.certs_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@contextlib.asynccontextmanager
async def services(cfg: Config, *names: str, poll: float = 0.02) -> AsyncIterator[Running]:
    """Open the store and start the named services in-process (as ``webgateway run`` does)."""
    store = await open_store(replace(cfg.store, poll_interval=poll))
    registry = CollectorRegistry()
    started: dict[str, Service] = {}
    try:
        for name in names:
            svc = factory(name)(cfg, store, registry)
            await svc.start()
            started[name] = svc
        yield Running(cfg, store, started, registry)
    finally:
        for svc in reversed(list(started.values())):
            await svc.stop()
        await store.close()


async def store_rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """Reach under the Store interface (what a test inspects or damages on purpose)."""
    from webgateway.pg_store import PgStore
    from webgateway.sqlite_store import SqliteStore

    if isinstance(store, SqliteStore):
        async with store.db.execute(sql) as cur:
            return [tuple(r) for r in await cur.fetchall()]
    assert isinstance(store, PgStore)
    async with store._read():  # the store's own callers (followers, leases) wait meanwhile
        return [tuple(r) for r in await store.conn.fetch(sql)]


@dataclass
class Running:
    config: Config
    store: Store
    services: dict[str, Service]
    registry: CollectorRegistry  # one for all the services, as in ``webgateway run``
