"""dnsd on a loopback port over a seeded store, and a client for it: what the dnsd
integration tests share."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
from prometheus_client import CollectorRegistry

from dnsd.service import DnsService, build
from tests.support import ZONE, fixed_label, held_domain, make_config
from webgateway.addresses import parse_hostport
from webgateway.config import StoreConfig
from webgateway.model import Name
from webgateway.store import Store
from webgateway.storefactory import open_store

BACKEND = (parse_hostport("10.9.8.7:8080"),)
SHOP = "shop.example.org"
SHOP_TARGET = f"{fixed_label(SHOP)}._acme.{ZONE}"


@dataclass
class Dns:
    store: Store
    svc: DnsService
    host: str
    port: int
    owner: int
    tmp: Path
    store_config: StoreConfig

    async def q(self, name: str, rdtype: str = "A", *, tcp: bool = False,
                use_edns: int | bool = 0, payload: int = 1232, want_dnssec: bool = False,
                rd: bool = True) -> dns.message.Message:
        m = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload,
                                   want_dnssec=want_dnssec)
        if not rd:
            m.flags &= ~dns.flags.RD
        if tcp:
            return await dns.asyncquery.tcp(m, self.host, port=self.port, timeout=3)
        return await dns.asyncquery.udp(m, self.host, port=self.port, timeout=3,
                                        ignore_trailing=False)

    async def raw(self, packet: bytes, timeout: float = 1.0) -> bytes | None:
        return await asyncio.to_thread(udp_exchange, packet, self.host, self.port, timeout)


def udp_exchange(packet: bytes, host: str, port: int, timeout: float) -> bytes | None:
    """Send raw bytes in one datagram; the first datagram back, or None within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None



async def start(tmp_path: Path, **sections: dict[str, Any]) -> Dns:
    cfg = make_config(tmp_path, **sections)
    store = await open_store(replace(cfg.store, poll_interval=0.02))
    owner = await store.create_owner("alice", "hash-alice")
    await store.put_name(Name("alice", owner.id, BACKEND), 100)
    await store.put_name(Name("bob", owner.id, BACKEND), 100)
    await held_domain(store, SHOP, "alice", owner.id, fixed_label(SHOP))
    await store.add_txt(f"_acme-challenge.{ZONE}", "wild-1")
    await store.add_txt(f"_acme-challenge.{ZONE}", "wild-2")
    await store.add_txt(SHOP_TARGET, "shop-token")
    svc = build(cfg, store, CollectorRegistry())
    await svc.start()
    return Dns(store, svc, "127.0.0.1", cfg.dns.listen[0].port, owner.id, tmp_path, cfg.store)
