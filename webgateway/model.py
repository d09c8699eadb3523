"""The values the store hands out and the services consume.

The values are frozen dataclasses. A ``Snapshot`` or ``ChangeSet`` is built complete by
the store, fresh for each call (every follower gets its own), and never touched by it
again; its mappings are typed read-only (``Mapping``: ``mypy --strict``, part of the
suite, rejects a write through them), so what dnsd, the proxy or certd is handed does not
change under its feet: a change always arrives as a new value with a new serial. A view
that keeps a mapping to change it later copies it (``dict(snapshot.names)``). At run time
they are plain dicts, not ``types.MappingProxyType``: ``dict()`` of a proxy is about 25x
slower than of a dict (0.4 s against 15 ms for a million names, which the proxy's route
table copies at every snapshot load).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from webgateway.addresses import HostPort, IPAddress

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
    """The life of one owner's claim on a custom domain.

    Several owners may hold PENDING claims on one domain; the first whose proof (the
    ``_acme-challenge`` CNAME to its own target) is seen in DNS becomes VERIFIED and the
    others become DROPPED. A PENDING claim not proven within ``[api] domain_claim_ttl``
    becomes EXPIRED. DROPPED and EXPIRED rows are kept (for one more TTL) so their owner
    can read why; they hold nothing.
    """

    PENDING = "pending"  # waiting for the owner's CNAMEs
    VERIFIED = "verified"  # CNAMEs seen; certificate requested
    ACTIVE = "active"  # certificate in place
    DROPPED = "dropped"  # another owner's claim proved control first
    EXPIRED = "expired"  # no proof within the claim TTL

    @property
    def holds(self) -> bool:
        """True for the (at most one) claim that owns its domain: routed, served, certified."""
        return self in (DomainState.VERIFIED, DomainState.ACTIVE)

    @property
    def closed(self) -> bool:
        return self in (DomainState.DROPPED, DomainState.EXPIRED)


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
    #: served through reverse tunnels (``tunnel/``); nodes authenticate with a token
    #: whose SHA-256 is kept here, so the proxy checks it from memory
    tunnel: bool = False
    tunnel_token_hash: str = ""


@dataclass(frozen=True)
class Domain:
    """One owner's claim on a custom domain (at most one per owner and domain).

    ``challenge_label`` is random per claim and identifies it: the owner proves the claim
    by CNAMEing ``_acme-challenge.FQDN`` to ``<challenge_label>._acme.ZONE``.
    """

    fqdn: str
    label: str  # the Name it routes to
    owner_id: int
    challenge_label: str  # <challenge_label>._acme.ZONE carries its DNS-01 TXT
    state: DomainState = DomainState.PENDING
    detail: str = ""
    created: float = 0.0
    updated: float = 0.0  # last change of state (a closed claim is purged a TTL after it)


@dataclass(frozen=True)
class Certificate:
    """One certificate we manage: the zone wildcard (id ``zone``) or a custom domain.

    Chain and key live in the store, so every gateway of a fleet serves the same
    certificate: ``chain`` is the PEM chain (leaf first), ``key`` the leaf's private key as
    ``webgateway.keyseal`` stores it (encrypted with ``[store] key_file`` when set; opened
    only where it is used). ``order_url``/``order_key`` are the order in flight and the key
    its CSR is made with, so any gateway can resume it. Keys never appear in a repr.
    """

    id: str
    domains: tuple[str, ...]
    state: CertState = CertState.PENDING
    chain: str = field(default="", repr=False)
    key: str = field(default="", repr=False)
    not_before: float = 0.0
    not_after: float = 0.0
    renew_at: float = 0.0
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    order_url: str = ""
    order_key: str = field(default="", repr=False)
    updated: float = 0.0

    @property
    def in_place(self) -> bool:
        """A chain and its key are stored: the certificate can be served."""
        return bool(self.chain and self.key)


@dataclass(frozen=True)
class Lease:
    """Who may act on a fleet-wide job (one ACME order per certificate) until when."""

    name: str
    holder: str
    expires: float  # in the clock of the caller that asked (``take_lease``'s ``now``)


@dataclass(frozen=True)
class TxtRecord:
    fqdn: str
    value: str
    created: float = 0.0


class NameLoad(enum.Enum):
    """How much of the names table a snapshot carries: what its view needs.

    At a million names the full rows are most of a snapshot's cost (about 10 s and
    600 MiB to build the ``Name`` objects, against under a second for the labels), and
    only the proxy routes by a name's backends: dnsd needs to know which labels exist
    (each answers with the gateway's addresses), certd none of them.
    """

    FULL = "full"  # ``names``: every Name
    LABELS = "labels"  # ``labels``: the labels only, as ASCII bytes (``names`` is empty)
    NONE = "none"  # neither


@dataclass(frozen=True)
class Gateway:
    """One gateway of the fleet as it registered itself (``webgateway.fleet``).

    ``ipv4``/``ipv6`` are its own public addresses (what a tunnel name held only here is
    answered with); ``dns``/``https`` where it listens, so ``webgateway check`` can ask each
    one; ``seen`` is its last heartbeat (its own clock), kept out of the change feed.
    """

    id: str
    ipv4: tuple[IPAddress, ...] = ()
    ipv6: tuple[IPAddress, ...] = ()
    dns: tuple[HostPort, ...] = ()
    https: tuple[HostPort, ...] = ()
    api: str = ""
    started: float = 0.0
    seen: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Everything the data plane needs, as of ``serial``."""

    serial: int
    names: Mapping[str, Name]
    domains: Mapping[str, Domain]
    txt: Mapping[str, tuple[str, ...]]
    certificates: Mapping[str, Certificate]
    meta: Mapping[str, str] = field(default_factory=dict)
    #: pending claims by challenge label (``domains`` holds only the claim that owns each
    #: domain, by fqdn: what dnsd serves and the proxy routes)
    claims: Mapping[str, Domain] = field(default_factory=dict)
    #: the fleet's registered gateways by id, and which of them hold a live tunnel for
    #: each tunnel name (label -> gateway ids; absent: none does)
    gateways: Mapping[str, Gateway] = field(default_factory=dict)
    tunnels: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: the names' labels when loaded with ``NameLoad.LABELS`` (else None: see ``names``),
    #: in the store's order (SQLite's: sorted, its primary-key index)
    labels: Sequence[bytes] | None = None

    def label_set(self) -> set[bytes]:
        """Every name's label as ASCII bytes, whichever way the names were loaded; a new
        set the caller may keep and change."""
        if self.labels is not None:
            return set(self.labels)
        return {label.encode("ascii") for label in self.names}


@dataclass(frozen=True)
class ChangeSet:
    """What changed after a serial: new values by key, and keys that are gone."""

    serial: int
    names: Mapping[str, Name | None]
    domains: Mapping[str, Domain | None]  # fqdn -> the claim that holds it now (None: nobody)
    txt: Mapping[str, tuple[str, ...]]  # fqdn -> all its values now (empty: none left)
    certificates: Mapping[str, Certificate | None]
    meta: Mapping[str, str | None] = field(default_factory=dict)
    claims: Mapping[str, Domain | None] = field(default_factory=dict)  # None: not pending now
    gateways: Mapping[str, Gateway | None] = field(default_factory=dict)  # None: gone
    tunnels: Mapping[str, frozenset[str]] = field(default_factory=dict)  # empty: none holds it

    @property
    def empty(self) -> bool:
        return not (self.names or self.domains or self.txt or self.certificates or self.meta
                    or self.claims or self.gateways or self.tunnels)


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
