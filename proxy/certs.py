"""Server-side TLS contexts, one per Certificate (not per name), chosen by SNI.

The proxy reads the SNI itself before the handshake, so it picks the context up front
rather than in an ``sni_callback``: exact SAN first, then the wildcard one level up.
Chain and key come from the store through the change feed (every gateway of a fleet
serves the same certificate); the key is opened with ``[store] key_file`` and handed to
OpenSSL through memory-only files, so it is never written to a disk. A context is rebuilt
only when its Certificate's chain or key changes; connections opened with the old context
keep it until they close, so a renewal never drops anyone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from tunnel.wire import ALPN as TUNNEL_ALPN
from webgateway.keyseal import KeySeal, KeySealError, slot
from webgateway.model import Certificate, CertState

log = logging.getLogger(__name__)

H1: tuple[str, ...] = ("http/1.1",)
H2: tuple[str, ...] = ("h2", "http/1.1")
TUNNEL: tuple[str, ...] = (TUNNEL_ALPN,)


@contextlib.contextmanager
def memory_files(*contents: bytes) -> Iterator[list[str]]:
    """Paths OpenSSL can open that hold ``contents`` in memory only (``memfd_create``):
    ``load_cert_chain`` reads nothing but files, and a key must not land on a disk."""
    fds: list[int] = []
    try:
        for data in contents:
            fd = _memfd()
            fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        yield [f"/proc/self/fd/{fd}" for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)


def _memfd() -> int:
    """A memory-only file; OSError naming memfd_create when the system has none (an old
    kernel or libc, a seccomp filter): the key is then not loaded, never put on a disk."""
    create = getattr(os, "memfd_create", None)
    try:
        if create is None:
            raise OSError(errno.ENOSYS, "not in this Python build")
        fd: int = create("webgateway-tls", getattr(os, "MFD_CLOEXEC", 1))
    except OSError as e:
        raise OSError(e.errno, f"memfd_create: {e.strerror} (keys are handed to OpenSSL only"
                      " through memory files; Linux 3.17 or later without a seccomp filter"
                      " refusing it is needed)") from None
    return fd


def _context(chain: str, key: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """One TLS 1.3 session ticket per full handshake, not OpenSSL's two: each costs about
    30 µs of server CPU (a session copy, its encryption and MAC), and its key lives in
    this context alone (one worker process, until the certificate is reloaded), so a
    second one rarely resumes anything."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION)
    ctx.num_tickets = 1
    ctx.load_cert_chain(chain, key)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass
class _Loaded:
    cert: Certificate
    h1: ssl.SSLContext
    h2: ssl.SSLContext
    tunnel: ssl.SSLContext


class CertTable:
    """Certificate id -> contexts, and SAN -> certificate id."""

    def __init__(self, seal: KeySeal | None = None) -> None:
        self.seal = seal or KeySeal()
        self._loaded: dict[str, _Loaded] = {}
        self._by_san: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def set(self, cert_id: str, cert: Certificate | None) -> None:
        old = self._loaded.get(cert_id)
        if cert is None or cert.state == CertState.REVOKED:
            if old is not None:
                del self._loaded[cert_id]
                self._reindex()
            return
        if not cert.in_place:
            # Pending or failed without a certificate: keep serving what we have (a renewal
            # that is being retried must not take a working name down).
            return
        if old is not None and (old.cert.chain, old.cert.key) == (cert.chain, cert.key):
            return
        try:
            key = self.seal.open(slot("cert", cert_id), cert.key)
            with memory_files(cert.chain.encode("ascii"), key) as (chain_file, key_file):
                loaded = _Loaded(cert, *(_context(chain_file, key_file, a)
                                         for a in (H1, H2, TUNNEL)))
        except (KeySealError, OSError, ssl.SSLError, ValueError) as e:
            # Keep the previous context if any: a bad row must not take a working name down.
            log.warning("certificate %s: cannot load it: %s", cert_id, e)
            return
        self._loaded[cert_id] = loaded
        self._reindex()
        log.info("certificate %s loaded for %s", cert_id, ", ".join(cert.domains))

    def _reindex(self) -> None:
        by_san: dict[str, str] = {}
        # Deterministic winner when two certificates share a SAN: the newest one.
        for cid, ld in sorted(self._loaded.items(), key=lambda kv: kv[1].cert.not_after):
            for d in ld.cert.domains:
                by_san[d.lower().rstrip(".")] = cid
        self._by_san = by_san

    def context_for(self, server_name: str, http2: bool = False,
                    tunnel: bool = False) -> ssl.SSLContext | None:
        cid = self._by_san.get(server_name)
        if cid is None:
            _, dot, parent = server_name.partition(".")
            if not dot:
                return None
            cid = self._by_san.get("*." + parent)
            if cid is None:
                return None
        ld = self._loaded[cid]
        return ld.tunnel if tunnel else ld.h2 if http2 else ld.h1
