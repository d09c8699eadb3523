"""The store interface: the hub every service reads from and writes to.

Kept as a ``Protocol`` so a PostgreSQL backend (fleets of gateways) can sit beside the
SQLite one: every write bumps one serial and records which keys it touched, which is
exactly what LISTEN/NOTIFY plus a ``changes`` table gives on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from webgateway.model import (
    Certificate,
    ChangeSet,
    Domain,
    DomainState,
    Gateway,
    Lease,
    Name,
    NameLoad,
    Owner,
    OwnerRemoval,
    OwnerSummary,
    Snapshot,
    TxtRecord,
)


class StoreError(Exception):
    """Base of the errors the API turns into 4xx/5xx answers."""


class NotFound(StoreError):
    pass


class Forbidden(StoreError):
    pass


class Conflict(StoreError):
    pass


class QuotaExceeded(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The backing storage refused a write (disk full, read-only, locked too long)."""


class Store(Protocol):
    #: Called with the seconds each committed write transaction took (metrics), when set.
    write_observer: Callable[[float], None] | None

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # -- the change feed
    async def serial(self) -> int: ...
    async def wait_changed(self, after: int, max_wait: float) -> int:
        """The serial once it is above ``after``, or the current one after ``max_wait`` s."""
        ...

    async def snapshot(self, names_as: NameLoad = NameLoad.FULL) -> Snapshot:
        """Everything at one serial; of the names, what ``names_as`` asks for."""
        ...

    async def changes_since(self, serial: int) -> ChangeSet | None:
        """What changed after ``serial``; ``None`` when that is too old: reload the snapshot."""
        ...

    # -- owners
    async def create_owner(self, name: str, token_hash: str) -> Owner: ...
    async def owner_by_token_hash(self, token_hash: str) -> Owner | None: ...
    async def list_owners(self) -> list[OwnerSummary]: ...
    async def set_owner_token(self, name: str, token_hash: str) -> Owner:
        """Replace an owner's token hash (the old token stops working at once); NotFound."""
        ...

    async def delete_owner(self, name: str) -> OwnerRemoval:
        """Remove an owner with its names and domains in one change; NotFound if unknown."""

    async def owner_names(self) -> dict[int, str]:
        """Every owner's name by id: the admin's listings say whose each row is."""
        ...

    # -- names
    async def put_name(self, name: Name, max_names: int) -> bool:
        """Create or replace; True when created. Forbidden if another owner holds it."""
        ...

    async def get_name(self, label: str) -> Name | None: ...
    async def list_names(self, owner_id: int | None = None) -> list[Name]: ...
    async def delete_name(self, label: str, owner_id: int) -> None: ...
    async def set_tunnel_token(self, label: str, owner_id: int, token_hash: str) -> None:
        """Replace a tunnel name's token hash (NotFound: not the owner's; Conflict: not a
        tunnel name). The change feed carries it, so old tokens stop working at once."""
        ...

    # -- custom domains: claims (one per owner and domain), at most one holding each domain
    async def put_domain(self, domain: Domain, max_domains: int) -> bool:
        """Create the owner's pending claim (True) or update its name. Conflict if another
        owner holds the domain; another owner's pending claim blocks nothing."""
        ...

    async def get_domain(self, fqdn: str, owner_id: int | None = None) -> Domain | None:
        """The owner's claim; without an owner, the holding claim, else the newest claim."""
        ...

    async def list_domains(self, owner_id: int | None = None) -> list[Domain]: ...
    async def delete_domain(self, fqdn: str, owner_id: int | None) -> None:
        """The owner's claim (``None``: every claim on the domain, for the operator)."""
        ...

    async def set_domain_state(self, fqdn: str, state: DomainState, detail: str) -> None:
        """State of the claim holding ``fqdn`` (verified or active)."""
        ...

    async def set_claim_detail(self, challenge_label: str, detail: str) -> None: ...
    async def verify_claim(self, challenge_label: str, detail: str) -> bool:
        """The claim now holds its domain; the domain's other pending claims are dropped."""
        ...

    async def expire_claims(self, now: float, ttl: float) -> int:
        """Expire pending claims older than ``ttl``; purge closed ones ``ttl`` after closing."""
        ...

    # -- DNS-01 TXT records
    async def add_txt(self, fqdn: str, value: str) -> None: ...
    async def remove_txt(self, fqdn: str, value: str | None = None) -> None: ...
    async def list_txt(self) -> list[TxtRecord]: ...

    # -- certificates
    async def put_certificate(
        self, cert: Certificate, lease: tuple[str, str] | None = None
    ) -> bool:
        """Write the row; with ``lease`` (name, holder) only while that holder holds it."""
        ...

    async def get_certificate(self, cert_id: str) -> Certificate | None: ...
    async def list_certificates(self) -> list[Certificate]: ...
    async def delete_certificate(self, cert_id: str) -> None: ...

    # -- small key/value state for services (ACME account URL and the like)
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    async def swap_meta(self, key: str, old: str | None, new: str) -> bool:
        """Set ``key`` to ``new`` only if it still holds ``old`` (None: absent), in one
        write serialized with every other writer: True when it was set. Lets gateways of a
        fleet race on one state change (a key rollover's phase) and exactly one win."""
        ...

    async def set_renew_at(self, cert_id: str, chain: str, renew_at: float) -> bool:
        """Move a valid certificate's renewal, only while its chain is still ``chain``."""
        ...

    async def legacy_certificate_files(self) -> dict[str, tuple[str, str]]:
        """Chain and key files named by rows of builds that kept them on disk."""
        ...

    async def import_certificate(
        self, cert_id: str, chain: str, key: str, chain_file: str
    ) -> bool:
        """Store a legacy row's chain and key, only while the row has no chain yet."""
        ...

    # -- fleet-wide coordination (outside the change feed: no serial bump)
    async def take_lease(self, name: str, holder: str, ttl: float, now: float) -> Lease:
        """Hold ``name`` for ``ttl`` s when free, expired or ``holder``'s already; returns
        the lease as it stands (another holder's: not granted), its end in ``now``'s clock.
        A fleet's store judges expiry by the database's clock, not the callers'."""
        ...

    async def release_lease(self, name: str, holder: str) -> None: ...
    async def release_leases(self, holder_prefix: str) -> int: ...

    # -- secrets shared by the fleet (sealed by the caller; not in snapshots)
    async def get_secret(self, name: str) -> str | None: ...
    async def delete_secret(self, name: str) -> None: ...
    async def put_secret_once(self, name: str, value: str) -> str:
        """Store ``value`` unless ``name`` exists; returns what is stored."""
        ...

    async def take_order_slot(
        self, account: str, cert_id: str, now: float, window: float, limit: int
    ) -> float:
        """Count a new ACME order against the fleet's budget: 0.0, or when one frees up."""
        ...

    async def give_back_order_slot(self, account: str, cert_id: str, taken: float) -> None:
        """Uncount the slot taken at ``taken``: the CA created no order with it."""
        ...

    # -- the fleet (``webgateway.fleet``): gateways and where each tunnel name is held
    async def register_gateway(self, gateway: Gateway, stale_after: float) -> list[str]:
        """Insert or heartbeat a gateway's row (only a new or changed one moves the serial)
        and drop the gateways and presence rows silent for ``stale_after`` s: their ids."""
        ...

    async def remove_gateway(self, gateway_id: str) -> None: ...
    async def sync_tunnels(self, gateway_id: str, held: Collection[str], now: float) -> None:
        """The gateway's presence rows become ``held`` (heartbeated to ``now``)."""
        ...

    async def list_gateways(self) -> list[Gateway]: ...
    async def list_tunnels(self) -> dict[str, frozenset[str]]: ...
