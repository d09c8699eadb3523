"""Pebble (the Debian package) on free loopback ports, for integration and e2e tests.

Usage as a context manager::

    with start_pebble(tmp_path, dns_server=("127.0.0.1", dns_port)) as pb:
        pb.directory      # https://127.0.0.1:<port>/dir
        pb.ca_bundle      # trust for its HTTPS listener (config acme.ca_bundle)
        pb.root_pem()     # the issuing root, to verify chains against

or through the ``pebble_factory`` fixture (import it into a test module or conftest:
``from tests.pebble import pebble_factory``), which stops every Pebble it started.
Pebble's own HTTPS certificate is generated here (the package ships none). Pebble keeps
everything in memory: a restart forgets accounts, orders and its root.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.procs import Proc
from tests.support import free_port

PEBBLE = shutil.which("pebble")
requires_pebble = pytest.mark.skipif(PEBBLE is None, reason="needs the pebble Debian package")


@dataclass
class Pebble:
    port: int
    mgmt_port: int
    ca_bundle: Path
    proc: Proc
    env: dict[str, str] = field(default_factory=dict)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def mgmt(self) -> str:
        return f"https://127.0.0.1:{self.mgmt_port}"

    def _ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._ctx(), timeout=10) as r:
            return bytes(r.read())

    def root_pem(self) -> bytes:
        """The root Pebble issues under (regenerated on every Pebble start)."""
        return self.get(f"{self.mgmt}/roots/0")

    def intermediate_pem(self) -> bytes:
        return self.get(f"{self.mgmt}/intermediates/0")

    def cert_status(self, serial: int) -> dict[str, Any]:
        """{"Status": "Valid"|"Revoked", ...} for a certificate serial number."""
        data: dict[str, Any] = json.loads(self.get(f"{self.mgmt}/cert-status-by-serial/{serial:x}"))
        return data

    def stop(self) -> None:
        self.proc.stop()


def _tls_files(work: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ca_path, cert_path, key_path = work / "ca.pem", work / "cert.pem", work / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    leaf.private_key_pem.write_to_path(str(key_path))
    return ca_path, cert_path, key_path


@contextlib.contextmanager
def start_pebble(
    work: Path,
    dns_server: tuple[str, int],
    *,
    nonce_reject: int = 0,
    authz_reuse: int = 0,
    eab_keys: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> Iterator[Pebble]:
    """Start Pebble validating DNS-01 against ``dns_server``; stop it on exit."""
    if PEBBLE is None:
        raise RuntimeError("pebble is not installed (apt-get install pebble)")
    work.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = _tls_files(work)
    port, mgmt = free_port(), free_port()
    cfg: dict[str, Any] = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": free_port(),
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab_keys),
    }
    if eab_keys:
        cfg["externalAccountMACKeys"] = eab_keys
    (work / "pebble.json").write_text(json.dumps({"pebble": cfg}))
    env = {
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
        "PEBBLE_AUTHZREUSE": str(authz_reuse),
        **(extra_env or {}),
    }
    host, dport = dns_server
    dns_arg = f"[{host}]:{dport}" if ":" in host else f"{host}:{dport}"
    proc = Proc("pebble", [PEBBLE, "-config", str(work / "pebble.json"), "-dnsserver", dns_arg,
                           "-strict=false"], work / "pebble.log", env=env)
    pb = Pebble(port, mgmt, ca_path, proc, env)
    try:
        end = time.monotonic() + ready_timeout
        while True:
            proc.check()
            try:
                pb.get(pb.directory)
                break
            except OSError:
                if time.monotonic() > end:
                    raise AssertionError(f"pebble did not come up:\n{proc.tail()}") from None
                time.sleep(0.05)
        yield pb
    finally:
        proc.stop()


PebbleFactory = Callable[..., Pebble]


@pytest.fixture
def pebble_factory(tmp_path: Path) -> Iterator[PebbleFactory]:
    """``pebble_factory(dns_server=(host, port), **options) -> Pebble``; all stopped after."""
    stack = contextlib.ExitStack()
    count = 0

    def make(dns_server: tuple[str, int], **kw: Any) -> Pebble:
        nonlocal count
        count += 1
        return stack.enter_context(start_pebble(tmp_path / f"pebble{count}", dns_server, **kw))

    with stack:
        yield make
