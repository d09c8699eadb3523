"""The in-memory route table: SNI (or Host) -> the name to reach, kept current by a Follower.

Lookups happen on every connection, so they are two or three dict probes on data the
change feed already prepared; nothing touches the store on the data path.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.certs import CertTable
from webgateway.addresses import HostPort
from webgateway.keyseal import KeySeal
from webgateway.model import ChangeSet, Domain, Name, Snapshot, TlsMode, merge


@dataclass(frozen=True, slots=True)
class Route:
    host: str  # the server name that matched
    name: Name

    @property
    def passthrough(self) -> bool:
        return self.name.tls == TlsMode.PASSTHROUGH

    @property
    def backends(self) -> tuple[HostPort, ...]:
        return self.name.backends


class RouteTable:
    """A ``webgateway.feed.View``: names, custom domains and certificates of one zone."""

    def __init__(self, zone: str, seal: KeySeal | None = None) -> None:
        """``seal`` opens the certificates' keys (``[store] key_file``)."""
        self.zone = zone.lower().rstrip(".")
        self._suffix = "." + self.zone
        self.seal = seal or KeySeal()
        self.names: dict[str, Name] = {}
        self.domains: dict[str, Domain] = {}
        self.certs = CertTable(self.seal)
        self.serial = 0

    # -- View
    def load(self, snapshot: Snapshot) -> None:
        self.names = dict(snapshot.names)
        self.domains = dict(snapshot.domains)
        certs = CertTable(self.seal)
        for cid, cert in snapshot.certificates.items():
            certs.set(cid, cert)
        self.certs = certs
        self.serial = snapshot.serial

    def apply(self, changes: ChangeSet) -> None:
        merge(self.names, changes.names)
        merge(self.domains, changes.domains)
        for cid, cert in changes.certificates.items():
            self.certs.set(cid, cert)
        self.serial = changes.serial

    # -- lookups
    def route(self, server_name: str) -> Route | None:
        """Exact ``label.ZONE``, else a custom domain (never a wildcard: none can be added)."""
        host = server_name.lower().rstrip(".")
        if host.endswith(self._suffix):
            label = host[: -len(self._suffix)]
            if "." not in label:
                name = self.names.get(label)
                return Route(host, name) if name is not None else None
        dom = self.domains.get(host)
        name = self.names.get(dom.label) if dom is not None else None
        return Route(host, name) if name is not None else None
