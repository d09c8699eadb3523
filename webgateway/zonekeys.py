"""The zone's DNSSEC signing key: generated once, kept in the store, the same for a fleet.

One combined signing key (CSK, flags 257) of algorithm 13 (ECDSAP256SHA256) signs every
RRset, DNSKEY included. With an online signer a KSK/ZSK split buys nothing: both private
keys would sit in the same store on the same hosts, and P-256 keys are small enough that
one DNSKEY RRset with one key keeps answers short. The cost is that replacing the key
means a DS change at the parent (CDS/CDNSKEY are published so a parent that scans them
can follow by itself).

The keys' public halves live in the store's meta table under ``META_KEY`` as JSON: a list,
each key's DNSKEY with the times of its rollover phases (``webgateway.keyroll`` moves them
on), so every gateway of a fleet reads the same keys and phases through the store's feed. A
key in the zone (published, not yet retired) is in the DNSKEY RRset and signs every RRset;
CDS/CDNSKEY name the one key the parent should trust.

The private halves are in the store's ``secrets`` table, sealed with ``[store] key_file``
(``webgateway.keyseal``) under the slot ``dnssec:<tag>:<DNSKEY digest>``: the snapshots and
change sets that every process (proxy, API, certd) receives carry meta, and only the signer
(dnsd) needs a private key, so only it reads them, one row each, when a key enters the zone.
The slot names the DNSKEY, not only its 16-bit tag, so two keys sharing a tag never share a
row. A store written before this kept the PEM in meta: ``ensure`` moves it at first start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from dataclasses import dataclass, field, replace

import dns.name
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webgateway.keyseal import KeySeal, KeySealError, slot
from webgateway.store import Store

log = logging.getLogger(__name__)

META_KEY = "dnssec.keys"
RESIGNED_META = "dnssec.resigned"  # when the serial last moved for secondaries' signatures
ALGORITHM = 13  # ECDSAP256SHA256
CSK_FLAGS = 257  # zone key + secure entry point
DIGEST_SHA256 = 2
DNSKEY = 48
DS = 43
CDS = 59
CDNSKEY = 60


class KeyMaterialError(ValueError):
    """The stored key material cannot be read (the message never carries the key)."""


@dataclass(frozen=True)
class ZoneKey:
    """One CSK and its rollover phases (epoch seconds; None: not reached). ``published``
    and ``active`` are the same moment in a double-signature roll (RFC 7583 3.3)."""

    # None once removed, and when read from meta: the signer opens it from the secrets
    private: ec.EllipticCurvePrivateKey | None = field(repr=False)
    created: float
    dnskey: bytes  # DNSKEY RDATA
    tag: int
    published: float | None = None  # in the DNSKEY RRset
    active: float | None = None  # signing every RRset
    ready: float | None = None  # every cache holds it: its DS may go to the parent (CDS)
    ds_seen: float | None = None  # its DS was seen at (or confirmed for) the parent
    retired: float | None = None  # out of the zone: no DNSKEY, no RRSIG
    removed: float | None = None  # the private key deleted

    @classmethod
    def from_private(cls, private: ec.EllipticCurvePrivateKey, created: float,
                     **phases: float | None) -> ZoneKey:
        nums = private.public_key().public_numbers()
        rdata = struct.pack(">HBB", CSK_FLAGS, 3, ALGORITHM) + nums.x.to_bytes(32, "big") + (
            nums.y.to_bytes(32, "big"))
        return cls(private, created, rdata, key_tag(rdata), **phases)

    @property
    def in_zone(self) -> bool:
        return self.published is not None and self.retired is None

    def ds(self, owner: bytes) -> bytes:
        """DS (and CDS) RDATA for this key at ``owner`` (lower-case wire name), SHA-256."""
        digest = hashlib.sha256(owner + self.dnskey).digest()
        return struct.pack(">HBB", self.tag, ALGORITHM, DIGEST_SHA256) + digest


_PHASES = ("published", "active", "ready", "ds_seen", "retired", "removed")


def in_zone(keys: list[ZoneKey]) -> list[ZoneKey]:
    """The keys published in the DNSKEY RRset, each signing every RRset."""
    return [k for k in keys if k.in_zone and k.removed is None]


def secret_name(k: ZoneKey) -> str:
    """The secrets row of ``k``'s private key, also its sealing slot (associated data)."""
    return slot("dnssec", f"{k.tag}:{hashlib.sha256(k.dnskey).hexdigest()[:16]}")


def privates(keys: list[ZoneKey]) -> dict[str, ec.EllipticCurvePrivateKey]:
    """The private keys ``keys`` carry, by secrets row (what a signer is given)."""
    return {secret_name(k): k.private for k in keys if k.private is not None}


def _pem(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _private_from_pem(pem: bytes) -> ec.EllipticCurvePrivateKey:
    priv = serialization.load_pem_private_key(pem, None)
    if not isinstance(priv, ec.EllipticCurvePrivateKey) or priv.curve.name != "secp256r1":
        raise KeyMaterialError("the stored key is not a P-256 key")
    return priv


def for_parent(keys: list[ZoneKey]) -> list[ZoneKey]:
    """The key whose DS the parent should hold (CDS/CDNSKEY, ``zone ds``): the newest one
    that is ready; a successor is not named before every cache can hold its DNSKEY."""
    ready = [k for k in in_zone(keys) if k.ready is not None]
    return [max(ready, key=lambda k: (k.ready or 0.0, k.created))] if ready else []


def key_tag(rdata: bytes) -> int:
    """RFC 4034 Appendix B."""
    acc = 0
    for i, b in enumerate(rdata):
        acc += b if i & 1 else b << 8
    acc += (acc >> 16) & 0xFFFF
    return acc & 0xFFFF


def generate(now: float | None = None) -> ZoneKey:
    """A new key; its phases are set by whoever puts it in the zone."""
    return ZoneKey.from_private(ec.generate_private_key(ec.SECP256R1()),
                                time.time() if now is None else now)


def first_key(now: float | None = None) -> ZoneKey:
    """The zone's first key: in the zone and ready at once (nothing to roll from)."""
    k = generate(now)
    return replace(k, published=k.created, active=k.created, ready=k.created)


def dump(keys: list[ZoneKey]) -> str:
    """The public form stored in meta: never a private key (those are in the secrets)."""
    out: list[dict[str, object]] = []
    for k in keys:
        item: dict[str, object] = {"algorithm": ALGORITHM, "created": k.created,
                                   "dnskey": k.dnskey.hex()}
        item.update({p: getattr(k, p) for p in _PHASES if getattr(k, p) is not None})
        out.append(item)
    return json.dumps({"keys": out})


def _phase(item: dict[str, object], name: str) -> float | None:
    v = item.get(name)
    return None if v is None else float(v)  # type: ignore[arg-type]


def load(text: str) -> list[ZoneKey]:
    """The keys from their stored form; KeyMaterialError (without the secret) when unreadable.

    A key stored before rollovers existed has no phases: it was in the zone and ready
    from its creation. A key stored before sealing has its PEM here (``private_key``): it
    is read with it, for ``ensure`` to move."""
    try:
        raw = json.loads(text)
        keys = []
        for item in raw["keys"]:
            if item["algorithm"] != ALGORITHM:
                raise KeyMaterialError(f"algorithm {item['algorithm']} is not supported")
            created = float(item["created"])
            phases = {p: _phase(item, p) for p in _PHASES}
            if not any(v is not None for v in phases.values()):
                phases.update(published=created, active=created, ready=created)
            if "private_key" not in item:
                rdata = bytes.fromhex(item["dnskey"])
                keys.append(ZoneKey(None, created, rdata, key_tag(rdata), **phases))
                continue
            priv = _private_from_pem(item["private_key"].encode("ascii"))
            keys.append(ZoneKey.from_private(priv, created, **phases))
    except KeyMaterialError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeyMaterialError(f"store meta {META_KEY!r} is not a readable key list") from None
    if not in_zone(keys):
        raise KeyMaterialError(f"store meta {META_KEY!r} holds no key in the zone")
    return keys


def ds_lines(zone: str, keys: list[ZoneKey], ttl: int = 3600) -> list[str]:
    """The DS records for the parent, one line each in zone-file form."""
    owner = zone.rstrip(".").lower() + "."
    out = []
    for k in keys:
        digest = k.ds(dns.name.from_text(owner).to_digestable())[4:].hex().upper()
        out.append(f"{owner} {ttl} IN DS {k.tag} {ALGORITHM} {DIGEST_SHA256} {digest}")
    return out


async def seal_private(store: Store, seal: KeySeal, k: ZoneKey) -> None:
    """Store ``k``'s private key sealed in its secrets row (before meta names the key, so a
    signer never finds a key it cannot open)."""
    assert k.private is not None
    name = secret_name(k)
    await store.put_secret_once(name, seal.seal(name, _pem(k.private)))


async def open_private(store: Store, seal: KeySeal, k: ZoneKey) -> ec.EllipticCurvePrivateKey:
    """``k``'s private key from its secrets row; KeyMaterialError (never the key) if it is
    missing, does not open, or is not the key whose DNSKEY meta holds."""
    name = secret_name(k)
    stored = await store.get_secret(name)
    if stored is None:
        raise KeyMaterialError(f"the private key of DNSSEC key {k.tag} is not in the store")
    try:
        priv = _private_from_pem(seal.open(name, stored))
    except KeySealError as e:
        raise KeyMaterialError(str(e)) from None
    except (ValueError, TypeError):
        raise KeyMaterialError(f"the stored private key of DNSSEC key {k.tag} is not"
                               " readable") from None
    if ZoneKey.from_private(priv, k.created).dnskey != k.dnskey:
        raise KeyMaterialError(f"the stored private key of DNSSEC key {k.tag} is another key")
    return priv


async def seal_stored(store: Store, seal: KeySeal) -> None:
    """Move private keys a store holds from before sealing (PEM in meta) into their sealed
    secrets rows and out of meta, by compare-and-swap (gateways upgrading at once agree).

    Every process runs it when it opens the store (``storefactory``), so the PEM leaves
    the snapshots at the first start of the upgraded gateway."""
    for _ in range(5):
        text = await store.get_meta(META_KEY)
        if text is None or "private_key" not in text:
            return
        keys = load(text)
        legacy = [k for k in keys if k.private is not None]
        for k in legacy:
            await seal_private(store, seal, k)
        if await store.swap_meta(META_KEY, text, dump(keys)):
            log.info("dnssec: moved %d private key(s) out of store meta into sealed secrets",
                     len(legacy))
            return
    raise KeyMaterialError(f"store meta {META_KEY!r} kept changing; start again")


async def ensure(store: Store, seal: KeySeal) -> list[ZoneKey]:
    """The zone's keys (public halves), generated and stored on first use.

    Two gateways starting at once on a fresh shared store may both generate; only the
    first write lands (``swap_meta``), the other's sealed private key is deleted, and both
    read that one back.
    """
    await seal_stored(store, seal)
    for _ in range(5):
        text = await store.get_meta(META_KEY)
        if text is not None:
            return load(text)
        k = first_key()
        await seal_private(store, seal, k)
        if not await store.swap_meta(META_KEY, None, dump([k])):
            await store.delete_secret(secret_name(k))
    raise KeyMaterialError(f"store meta {META_KEY!r} kept changing; start again")
