"""API tokens: random, shown once, stored only as a SHA-256 digest.

Tokens carry 256 bits of entropy, so a fast hash is enough (no password stretching);
the prefix makes a leaked token easy to recognise in a secret scanner.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

PREFIX = "wg_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """Return (the hash of the token in ``path``, whether it was just created).

    The file holds the token itself (the operator reads it to run ``owner add``, or
    gives it to Prometheus as a credentials file); it is created 0600 and never logged.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty: delete it to have a new token made") from None
        return hash_token(token), False
    token = new_token()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return hash_token(token), True
