"""Write the roots a local Pebble issues under to one PEM file, for ``curl --cacert``.

    python scripts/pebble_root.py MGMT_URL LISTENER_CA OUT

Used by ``scripts/run-local`` on every start. Pebble makes a new root each time it starts
and keeps its keys only in memory, so a certificate certd obtained before a restart
still chains to an earlier root: OUT holds the current root first, then the roots of
the last few earlier runs. Trusting those is harmless — their keys died with the
process that made them — and it keeps the printed ``curl`` line working across restarts.
"""

from __future__ import annotations

import os
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

KEEP = 8
BEGIN = b"-----BEGIN CERTIFICATE-----"
END = b"-----END CERTIFICATE-----"


def pem_blocks(data: bytes) -> list[bytes]:
    """The certificates in a PEM text, each normalised to ``BEGIN..END\\n``."""
    out: list[bytes] = []
    rest = data
    while (start := rest.find(BEGIN)) >= 0 and (end := rest.find(END, start)) >= 0:
        out.append(rest[start : end + len(END)].strip() + b"\n")
        rest = rest[end + len(END) :]
    return out


def merge(current: bytes, previous: bytes, keep: int = KEEP) -> bytes:
    """The current root first, then earlier ones (no repeats), at most ``keep`` in all."""
    now = pem_blocks(current)
    if len(now) != 1:
        raise ValueError(f"expected one certificate from Pebble, got {len(now)}")
    roots = now + [b for b in pem_blocks(previous) if b != now[0]]
    return b"".join(roots[:keep])


def fetch_root(mgmt_url: str, cafile: str, wait: float = 20.0) -> bytes:
    """Pebble's current root from its management interface, waiting for it to listen."""
    ctx = ssl.create_default_context(cafile=cafile)
    url = mgmt_url.rstrip("/") + "/roots/0"
    end = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as r:  # noqa: S310
                return bytes(r.read())
        except OSError as e:
            if time.monotonic() > end:
                raise OSError(f"Pebble's {url} did not answer in {wait:g} s: {e}") from None
            time.sleep(0.1)


def write_roots(out: Path, current: bytes) -> None:
    """Replace ``out`` atomically with the merged bundle (world-readable: roots are public)."""
    previous = out.read_bytes() if out.exists() else b""
    data = merge(current, previous)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: pebble_root.py MGMT_URL LISTENER_CA OUT", file=sys.stderr)
        return 2
    mgmt_url, cafile, out = argv
    try:
        write_roots(Path(out), fetch_root(mgmt_url, cafile))
    except (OSError, ValueError) as e:
        print(f"pebble_root: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
