"""CAA at the apex restricts issuance to the configured CA, bound to our ACME account
(RFC 8657 ``accounturi``) once certd has registered it."""

from __future__ import annotations

from pathlib import Path

import dns.asyncquery
import dns.message

from tests.certd_harness import dns_target, wait_cert
from tests.pebble import pebble_factory, requires_pebble
from tests.support import ZONE, make_config, services
from webgateway.model import acme_account_meta_key

__all__ = ["pebble_factory"]
pytestmark = requires_pebble


async def caa(host: str, port: int) -> list[str]:
    r = await dns.asyncquery.udp(dns.message.make_query(ZONE, "CAA"), host, port=port, timeout=2)
    return sorted(rd.to_text() for rr in r.answer for rd in rr)


async def test_caa_binds_the_account(tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    cfg0 = make_config(tmp_path, zone={"caa_issuers": ["letsencrypt.org", "pebble.test"],
                                       "caa_accounturi": True})
    host, port = dns_target(cfg0)
    pb = pebble_factory((host, port))
    cfg = make_config(tmp_path, zone={"caa_issuers": ["letsencrypt.org", "pebble.test"],
                                      "caa_accounturi": True},
                      dns={"listen": [f"{host}:{port}"]},
                      acme={"directory": pb.directory, "ca_bundle": str(pb.ca_bundle)})
    async with services(cfg, "dnsd"):
        # before any account exists: plain issuer restriction
        assert await caa(host, port) == ['0 issue "letsencrypt.org"', '0 issue "pebble.test"']
    async with services(cfg, "dnsd", "certd") as gw:
        await wait_cert(gw.store, "zone", 60)
        url = await gw.store.get_meta(acme_account_meta_key(pb.directory))
        assert url and url.startswith("https://127.0.0.1:")
        assert await caa(host, port) == [f'0 issue "letsencrypt.org; accounturi={url}"',
                                         f'0 issue "pebble.test; accounturi={url}"']
