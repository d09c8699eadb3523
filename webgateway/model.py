"""The values the store hands out and the services consume.

They are frozen so that a snapshot given to dnsd or the proxy can never be changed
under their feet; a change always arrives as a new value with a new serial.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from webgateway.addresses import HostPort

K = TypeVar("K")
V = TypeVar("V")


class TlsMode(enum.StrEnum):
    TERMINATE = "terminate"
    PASSTHROUGH = "passthrough"


class CertState(enum.StrEnum):
    PENDING = "pending"  # wanted, no certificate yet
    VALID = "valid"  # a certificate is in place (it may be renewing)
    FAILED = "failed"  # the last attempt failed; ``next_attempt`` says when we retry
    REVOKED = "revoked"


class DomainState(enum.StrEnum):
    PENDING = "pending"  # waiting for the owner's CNAMEs
    VERIFIED = "verified"  # CNAMEs seen; certificate requested
    ACTIVE = "active"  # certificate in place


@dataclass(frozen=True)
class Owner:
    id: int
    name: str


@dataclass(frozen=True)
class OwnerSummary:
    """One line of the admin's owner listing: who, since when, and what they hold."""

    name: str
    created: float
    names: int
    domains: int


@dataclass(frozen=True)
class OwnerRemoval:
    """What removing an owner took with it, so the admin is told (and the feed carries it)."""

    name: str
    names: tuple[str, ...]
    domains: tuple[str, ...]


@dataclass(frozen=True)
class Name:
    label: str
    owner_id: int
    backends: tuple[HostPort, ...]
    tls: TlsMode = TlsMode.TERMINATE
    proxy_protocol: bool = False
    http2: bool = False
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class Domain:
    fqdn: str
    label: str  # the Name it routes to
    owner_id: int
    challenge_label: str  # <challenge_label>._acme.ZONE carries its DNS-01 TXT
    state: DomainState = DomainState.PENDING
    detail: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class Certificate:
    """One certificate we manage: the zone wildcard (id ``zone``) or a custom domain.

    Key and chain live in files (key 0600) so the proxy loads them without the store
    and nothing secret sits in the database.
    """

    id: str
    domains: tuple[str, ...]
    state: CertState = CertState.PENDING
    cert_path: str = ""
    key_path: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    renew_at: float = 0.0
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    order_url: str = ""
    updated: float = 0.0


@dataclass(frozen=True)
class TxtRecord:
    fqdn: str
    value: str
    created: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Everything the data plane needs, as of ``serial``."""

    serial: int
    names: dict[str, Name]
    domains: dict[str, Domain]
    txt: dict[str, tuple[str, ...]]
    certificates: dict[str, Certificate]
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeSet:
    """What changed after a serial: new values by key, and keys that are gone."""

    serial: int
    names: dict[str, Name | None]
    domains: dict[str, Domain | None]
    txt: dict[str, tuple[str, ...]]  # fqdn -> all its values now (empty: none left)
    certificates: dict[str, Certificate | None]
    meta: dict[str, str | None] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.names or self.domains or self.txt or self.certificates or self.meta)


def merge(target: dict[K, V], changes: Mapping[K, V | None]) -> None:
    """Apply one kind of a ChangeSet to a view's dict: a value replaces, ``None`` removes."""
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def acme_account_meta_key(directory: str) -> str:
    """The store meta key under which certd keeps its account URL for one ACME directory.

    dnsd reads it too, to publish the RFC 8657 ``accounturi`` CAA parameter.
    """
    return f"certd.account_url {directory}"
