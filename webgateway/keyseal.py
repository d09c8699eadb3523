"""Private keys at rest in the store: sealed with ``[store] key_file`` when one is set.

A fleet's store is a networked PostgreSQL, backed up and read by people who should not hold
the gateways' TLS keys; so every private key (certificates', pending orders', the ACME
account's, the zone's DNSSEC keys: ``webgateway.zonekeys``) is written AES-256-GCM-encrypted
under a 32-byte secret that lives only in a 0600 file on the gateways, with the key's *slot*
(``cert:zone``, ``order:shop.example.org``, ``acme-account``, ``dnssec:<tag>:<digest>``) as
associated data: a sealed key copied into another slot (another
certificate's row) does not open. Without ``key_file`` (the SQLite default: the store file
is already 0600 on the machine that would hold the key file) keys are stored as
``plain:`` PEM; a store may hold both, so a key file can be added later.

Errors never carry key material: only the slot and what to fix.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from webgateway.store import Store

PLAIN = "plain:"
SEALED = "aesgcm1:"
KEY_BYTES = 32
_NONCE = 12
#: A known value sealed by the first gateway with a key file (its slot: the secret's name),
#: which every gateway opens at start-up to prove it holds the same key file.
CHECK_ROW = "keyseal-check"
_CHECK_TEXT = b"webgateway key file check"


class KeySealError(Exception):
    """A stored key cannot be opened (no key file, or another one); never holds the key."""


#: How an operator makes a key file (``{0}``: its path).
MAKE_KEY_FILE = "head -c 32 /dev/urandom > {0}; chmod 600 {0}"
_TEXT = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\r")


def parse_key_file(data: bytes, path: str = "F") -> bytes:
    """The 32-byte secret of a key file, in one of three forms told apart by length alone:
    exactly 32 raw bytes, or one line of 44 base64 (``openssl rand -base64 32``) or 64 hex
    characters, with or without a newline. 32 bytes that are all text are refused: they
    are a passphrase typed into the file, not random bytes (32 random bytes are all
    printable once in ~10^13). ValueError says why not and how to make one."""
    line = data.removesuffix(b"\n")
    if len(data) == KEY_BYTES and not set(data) <= _TEXT:
        return data
    try:
        if len(line) == 44:
            key = base64.b64decode(line, validate=True)
            if len(key) == KEY_BYTES and base64.b64encode(key) == line:
                return key
        elif len(line) == 2 * KEY_BYTES:
            return binascii.unhexlify(line)
    except (ValueError, binascii.Error):
        pass
    raise ValueError(f"must hold exactly 32 random bytes, or their base64 (44 characters) or"
                     f" hex (64 characters) on one line: make one with"
                     f" {MAKE_KEY_FILE.format(path)}")


def slot(kind: str, name: str) -> str:
    """The associated data of one key: what it is (``cert``, ``order``) and whose."""
    return f"{kind}:{name}"


class KeySeal:
    """Seals and opens the private keys the store keeps; ``key`` empty: stored as PEM."""

    def __init__(self, key: bytes = b"") -> None:
        if key and len(key) != KEY_BYTES:
            raise ValueError(f"a key file secret is {KEY_BYTES} bytes")
        self._aead = AESGCM(key) if key else None

    @property
    def encrypts(self) -> bool:
        return self._aead is not None

    def seal(self, slot_: str, pem: bytes) -> str:
        if self._aead is None:
            return PLAIN + pem.decode("ascii")
        nonce = os.urandom(_NONCE)
        ct = self._aead.encrypt(nonce, pem, slot_.encode())
        return SEALED + base64.b64encode(nonce + ct).decode("ascii")

    def open(self, slot_: str, stored: str) -> bytes:
        """The PEM of a stored key; KeySealError if this gateway cannot open it."""
        if stored.startswith(PLAIN):
            return stored[len(PLAIN):].encode("ascii")
        if not stored.startswith(SEALED):
            raise KeySealError(f"the stored key of {slot_} is in an unknown format")
        if self._aead is None:
            raise KeySealError(f"the key of {slot_} is encrypted with a [store] key_file, and"
                               " this gateway has none: copy the fleet's key file here")
        try:
            raw = base64.b64decode(stored[len(SEALED):], validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], slot_.encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise KeySealError(f"the key of {slot_} does not open with this gateway's"
                               " [store] key_file: every gateway needs the same file") from None


async def check_store(store: Store, seal: KeySeal) -> None:
    """KeySealError (saying what to fix) unless ``seal`` opens the keys ``store`` holds.

    A gateway with another key file, or none, would otherwise start and serve no
    certificate, and its certd would record failed orders in rows the fleet shares.
    """
    stored = await store.get_secret(CHECK_ROW)
    if stored is None:
        if not seal.encrypts:
            return
        stored = await store.put_secret_once(CHECK_ROW, seal.seal(CHECK_ROW, _CHECK_TEXT))
    if stored.startswith(PLAIN):
        return
    if not seal.encrypts:
        raise KeySealError("the private keys in the store are encrypted with a key file, and"
                           " this gateway has none: copy the fleet's key file here and set"
                           " [store] key_file")
    try:
        seal.open(CHECK_ROW, stored)
    except KeySealError:
        raise KeySealError("this file does not open the private keys in the store (another"
                           " gateway sealed them with a different key file): every gateway"
                           " of the fleet needs the same file") from None
