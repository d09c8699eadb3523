"""``webgateway check``'s fleet part: every registered gateway serves the same zone and cert.

From the registry (``webgateway.fleet``) it asks each gateway's DNS for the zone's SOA and
each gateway's HTTPS for the certificate it presents for one name of the zone (SNI
``LABEL.ZONE``: the proxy answers only names it routes; ``--name``, else the first name the
gateway terminates TLS for, so the zone's wildcard certificate is what is compared),
then ``judge_fleet`` (pure, unit-tested on values) says, one line per gateway, whether all
serve the same serial and the same certificate (SHA-256 of its DER), and what to fix when
not: a stale gateway (no heartbeat), one that does not answer, one that differs.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

from webgateway.config import Config
from webgateway.delegation import TIMEOUT, soa_serial
from webgateway.fleet import reachable
from webgateway.model import Gateway, Name, TlsMode
from webgateway.store import StoreError
from webgateway.storefactory import open_store


@dataclass
class GatewayObserved:
    gateway: Gateway
    serials: dict[str, int | str] = field(default_factory=dict)  # dns addr -> serial / error
    certs: dict[str, str] = field(default_factory=dict)  # https addr -> "sha256:HEX" / error


def fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _majority(values: list[str] | list[int]) -> object:
    return Counter(values).most_common(1)[0][0] if values else None


def judge_fleet(zone: str, seen: list[GatewayObserved], now: float,
                stale_after: float) -> list[tuple[bool, str]]:
    """One line per gateway (ok, or FIX with what to do), judged against the fleet's
    majority serial and certificate fingerprint."""
    if not seen:
        return [(False, "no gateway is registered in the store: is `webgateway run` running"
                        " with this [store]? (each one registers itself at start-up)")]
    serials = [v for o in seen for v in o.serials.values() if isinstance(v, int)]
    prints = [v for o in seen for v in o.certs.values() if v.startswith("sha256:")]
    serial, cert = _majority(serials), _majority(prints)
    out: list[tuple[bool, str]] = []
    for o in seen:
        gw = o.gateway
        problems: list[str] = []
        age = now - gw.seen
        if age > stale_after:
            problems.append(f"no heartbeat for {age:.0f} s (stale after {stale_after:g} s): is"
                            " it running and can it reach the store? The others drop it from"
                            " the registry and from tunnel answers")
        for addr, v in sorted(o.serials.items()):
            if isinstance(v, str):
                problems.append(f"DNS {addr} does not answer for {zone}: {v}")
            elif v != serial:
                problems.append(f"DNS {addr} serves SOA serial {v}, the fleet {serial}: it does"
                                " not follow the shared store (check its [store] url and log)")
        for addr, v in sorted(o.certs.items()):
            if not v.startswith("sha256:"):
                problems.append(f"HTTPS {addr} gives no certificate for {zone}: {v}")
            elif v != cert:
                problems.append(f"HTTPS {addr} presents certificate {v[:23]}..., the fleet"
                                f" {str(cert)[:23]}...: it serves another certificate than"
                                " the others (certificates must come from the shared store)")
        if problems:
            out += [(False, f"gateway {gw.id}: {p}") for p in problems]
            continue
        parts = [f"dns {', '.join(sorted(o.serials))} serial {serial}" if o.serials else "",
                 f"https {', '.join(sorted(o.certs))} cert {str(cert)[:23]}..." if o.certs
                 else "", f"seen {age:.0f} s ago"]
        out.append((True, f"gateway {gw.id}: {'; '.join(p for p in parts if p)}"))
    return out


def presented_cert(host: str, port: int, server_name: str) -> str:
    """The fingerprint of the certificate ``host:port`` presents for ``server_name``, or why
    there is none (the chain is not verified: the same bytes everywhere is what counts)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as e:
        return f"the TLS handshake failed ({e.reason or e}): is a certificate for it in place?"
    except ConnectionRefusedError:
        return "the connection was refused: nothing listens on that address and port"
    except OSError as e:
        return f"no connection ({e.strerror or type(e).__name__})"
    return fingerprint(der) if der else "no certificate presented"


def observe_gateway(zone: str, gw: Gateway, server_name: str | None) -> GatewayObserved:
    o = GatewayObserved(gw)
    public = (*gw.ipv4, *gw.ipv6)
    for hp in gw.dns:
        at = reachable(hp, public)
        o.serials[str(at)] = soa_serial(zone, str(at.host), at.port)
    for hp in gw.https if server_name else ():
        at = reachable(hp, public)
        o.certs[str(at)] = presented_cert(str(at.host), at.port, server_name or zone)
    return o


async def _registry(config: Config) -> tuple[list[Gateway], list[Name]]:
    store = await open_store(config.store)
    try:
        return await store.list_gateways(), await store.list_names()
    finally:
        await store.close()


def check_fleet(config: Config, label: str | None = None,
                settle: float = 1.0) -> list[tuple[bool, str]]:
    """Ask every registered gateway; serials that differ are asked once more after
    ``settle`` s, since a change reaches the fleet within a second."""
    zone = config.zone.name
    try:
        gateways, names = asyncio.run(_registry(config))
    except (StoreError, OSError) as e:
        return [(False, f"cannot read the fleet registry from the store: {e}")]
    out: list[tuple[bool, str]] = []
    if label is None:
        label = next((n.label for n in names if n.tls == TlsMode.TERMINATE), None)
        if label is None:
            out.append((True, "no name is terminated on the gateways yet: certificates not"
                              " compared (give --name LABEL once one is)"))
    server_name = f"{label}.{zone}" if label else None
    seen = [observe_gateway(zone, gw, server_name) for gw in gateways]
    if len({v for o in seen for v in o.serials.values() if isinstance(v, int)}) > 1:
        time.sleep(settle)
        seen = [observe_gateway(zone, gw, server_name) for gw in gateways]
    return out + judge_fleet(zone, seen, time.time(), config.fleet.stale_after)
