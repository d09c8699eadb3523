"""The live proxy against real clients (curl, openssl s_client) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.proxy_harness import (
    BackendServer,
    Gateway,
    curl,
    fqdn,
    gateway,
    run,
)
from tests.support import ZONE


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(tmp_path) as g:
        yield g


@pytest.fixture
async def backends() -> AsyncIterator[tuple[BackendServer, BackendServer]]:
    v4 = BackendServer("v4", "127.0.0.1")
    v6 = BackendServer("v6", "::1")
    await v4.start()
    await v6.start()
    yield v4, v6
    await v4.close()
    await v6.close()


async def test_terminate_with_wildcard_cert_to_v4_and_v6_backends(
    gw: Gateway, backends: tuple[BackendServer, BackendServer]
) -> None:
    v4, v6 = backends
    await gw.certificate("zone", ZONE, f"*.{ZONE}")
    await gw.name("alice", v4.addr)
    await gw.name("bob", v6.addr)
    rc, out, err = await curl(gw, fqdn("alice"), "/hello")
    assert rc == 0, err
    assert out == b"v4 /hello\n"
    rc, out, err = await curl(gw, fqdn("bob"), "/x")
    assert rc == 0, err
    assert out == b"v6 /x\n"
