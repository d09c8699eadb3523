"""kill -9 in the middle of an order: the restarted certd resumes it, reuses the account,
and leaves no TXT behind. certd and dnsd run as separate processes on one store."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from tests.gateway import write_config
from tests.pebble import pebble_factory, requires_pebble
from tests.procs import Proc, wait_dns
from tests.support import ZONE, free_port
from webgateway.config import load_config
from webgateway.model import CertState, acme_account_meta_key
from webgateway.sqlite_store import SqliteStore

__all__ = ["pebble_factory"]
pytestmark = requires_pebble

CLI = [sys.executable, "-m", "webgateway.cli"]


async def test_kill_9_mid_order_resumes(tmp_path: Path, pebble_factory) -> None:  # type: ignore[no-untyped-def]
    dns_port = free_port()
    pb = pebble_factory(("127.0.0.1", dns_port))
    cfg_path = write_config(
        tmp_path, dns={"listen": [f"127.0.0.1:{dns_port}"]},
        acme={"directory": pb.directory, "ca_bundle": str(pb.ca_bundle),
              "propagation_timeout": 60},
        store={"poll_interval": 0.02},
    )
    cfg = load_config(cfg_path)
    store = SqliteStore(cfg.store.path, 0.02)
    # 1. certd alone: no DNS server answers, so the order stops before the challenge
    certd = Proc("certd1", [*CLI, "certd", "--config", str(cfg_path)], tmp_path / "certd1.log")
    await store.open()
    try:
        end = time.monotonic() + 30
        while True:
            certd.check()
            cert = await store.get_certificate("zone")
            txt = await store.list_txt()
            if cert is not None and cert.order_url and txt:
                break
            assert time.monotonic() < end, certd.tail()
            await asyncio.sleep(0.05)
        order_url = cert.order_url
        account = await store.get_meta(acme_account_meta_key(pb.directory))
        assert account
        assert {t.fqdn for t in txt} == {f"_acme-challenge.{ZONE}"}
        certd.stop(signal.SIGKILL)
        # 2. dnsd and a new certd: the order is picked up where it stopped
        dnsd = Proc("dnsd", [*CLI, "dnsd", "--config", str(cfg_path)], tmp_path / "dnsd.log")
        certd2 = Proc("certd2", [*CLI, "certd", "--config", str(cfg_path)],
                      tmp_path / "certd2.log")
        try:
            wait_dns("127.0.0.1", dns_port, ZONE, dnsd)
            end = time.monotonic() + 60
            while True:
                certd2.check()
                cert = await store.get_certificate("zone")
                if cert is not None and cert.state == CertState.VALID:
                    break
                assert time.monotonic() < end, certd2.tail()
                await asyncio.sleep(0.05)
            log = (tmp_path / "certd2.log").read_text()
            assert f"resuming order {order_url}" in log, log
            assert await store.get_meta(acme_account_meta_key(pb.directory)) == account
            assert "registered" not in log
            end = time.monotonic() + 10
            while await store.list_txt():
                assert time.monotonic() < end
                await asyncio.sleep(0.05)
        finally:
            certd2.stop()
            dnsd.stop()
    finally:
        certd.stop(signal.SIGKILL)
        await store.close()
