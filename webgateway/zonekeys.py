"""The zone's DNSSEC signing key: generated once, kept in the store, the same for a fleet.

One combined signing key (CSK, flags 257) of algorithm 13 (ECDSAP256SHA256) signs every
RRset, DNSKEY included. With an online signer a KSK/ZSK split buys nothing: both private
keys would sit in the same store on the same hosts, and P-256 keys are small enough that
one DNSKEY RRset with one key keeps answers short. The cost is that replacing the key
means a DS change at the parent (CDS/CDNSKEY are published so a parent that scans them
can follow by itself).

The key lives in the store's meta table under ``META_KEY`` as JSON (a list, so a rollover
can publish a second key beside the first): every gateway of a fleet reads the same key
through the store's feed, and it never touches disk outside the store.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import dataclass

import dns.name
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webgateway.store import Store

META_KEY = "dnssec.keys"
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
    private: ec.EllipticCurvePrivateKey
    created: float
    dnskey: bytes  # DNSKEY RDATA
    tag: int

    @classmethod
    def from_private(cls, private: ec.EllipticCurvePrivateKey, created: float) -> ZoneKey:
        nums = private.public_key().public_numbers()
        rdata = struct.pack(">HBB", CSK_FLAGS, 3, ALGORITHM) + nums.x.to_bytes(32, "big") + (
            nums.y.to_bytes(32, "big"))
        return cls(private, created, rdata, key_tag(rdata))

    def ds(self, owner: bytes) -> bytes:
        """DS (and CDS) RDATA for this key at ``owner`` (lower-case wire name), SHA-256."""
        digest = hashlib.sha256(owner + self.dnskey).digest()
        return struct.pack(">HBB", self.tag, ALGORITHM, DIGEST_SHA256) + digest


def key_tag(rdata: bytes) -> int:
    """RFC 4034 Appendix B."""
    acc = 0
    for i, b in enumerate(rdata):
        acc += b if i & 1 else b << 8
    acc += (acc >> 16) & 0xFFFF
    return acc & 0xFFFF


def generate(now: float | None = None) -> ZoneKey:
    return ZoneKey.from_private(ec.generate_private_key(ec.SECP256R1()),
                                time.time() if now is None else now)


def dump(keys: list[ZoneKey]) -> str:
    out = []
    for k in keys:
        pem = k.private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode("ascii")
        out.append({"algorithm": ALGORITHM, "created": k.created, "private_key": pem})
    return json.dumps({"keys": out})


def load(text: str) -> list[ZoneKey]:
    """The keys from their stored form; KeyMaterialError (without the secret) when unreadable."""
    try:
        raw = json.loads(text)
        keys = []
        for item in raw["keys"]:
            if item["algorithm"] != ALGORITHM:
                raise KeyMaterialError(f"algorithm {item['algorithm']} is not supported")
            priv = serialization.load_pem_private_key(item["private_key"].encode("ascii"), None)
            if not isinstance(priv, ec.EllipticCurvePrivateKey) or priv.curve.name != "secp256r1":
                raise KeyMaterialError("the stored key is not a P-256 key")
            keys.append(ZoneKey.from_private(priv, float(item["created"])))
    except KeyMaterialError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeyMaterialError(f"store meta {META_KEY!r} is not a readable key list") from None
    if not keys:
        raise KeyMaterialError(f"store meta {META_KEY!r} holds no key")
    return keys


def ds_lines(zone: str, keys: list[ZoneKey], ttl: int = 3600) -> list[str]:
    """The DS records for the parent, one line each in zone-file form."""
    owner = zone.rstrip(".").lower() + "."
    out = []
    for k in keys:
        digest = k.ds(dns.name.from_text(owner).to_digestable())[4:].hex().upper()
        out.append(f"{owner} {ttl} IN DS {k.tag} {ALGORITHM} {DIGEST_SHA256} {digest}")
    return out


async def ensure(store: Store) -> list[ZoneKey]:
    """The zone's keys, generated and stored on first use.

    Two gateways starting at once on a fresh shared store may both generate; the last
    write wins and every view follows the stored value through the feed, so they converge
    on one key before any DS is handed to the parent (``zone ds`` reads it back).
    """
    text = await store.get_meta(META_KEY)
    if text is None:
        await store.set_meta(META_KEY, dump([generate()]))
        text = await store.get_meta(META_KEY)
        assert text is not None
    return load(text)
