"""A small zone for the sans-IO dnsd tests: its configuration and a store snapshot."""

from __future__ import annotations

import ipaddress

from tests.support import ZONE
from tests.support import fixed_label as challenge_label
from webgateway.config import ZoneConfig
from webgateway.model import Domain, Name, Snapshot

__all__ = ["ZONE", "snapshot", "zone_config"]


def zone_config(**kw: object) -> ZoneConfig:
    args: dict[str, object] = {
        "name": ZONE,
        "gateway_ipv4": (ipaddress.IPv4Address("192.0.2.1"),),
        "gateway_ipv6": (ipaddress.IPv6Address("2001:db8::1"),),
        "nameservers": {f"ns1.{ZONE}": (ipaddress.IPv4Address("192.0.2.53"),)},
        "hostmaster": f"hostmaster@{ZONE}",
    }
    args.update(kw)
    return ZoneConfig(**args)  # type: ignore[arg-type]


def snapshot(serial: int = 7) -> Snapshot:
    shop = "shop.example.org"
    return Snapshot(
        serial,
        {lab: Name(lab, 1, ()) for lab in ("alice", "bob")},
        {shop: Domain(shop, "alice", 1, challenge_label(shop))},
        {f"_acme-challenge.{ZONE}": ("a", "b"), f"{challenge_label(shop)}._acme.{ZONE}": ("t",)},
        {},
    )
