"""``webgateway status``: the operator's one screen.

Gathering (the API over HTTP, SOA queries, TCP connects) is a thin shell; ``assess_ns``
and ``render`` are pure, so the rules and the layout are tested on values. The SOA
queries are ``webgateway.delegation``'s, the same ones ``webgateway check`` makes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from webgateway.addresses import HostPort
from webgateway.config import Config
from webgateway.delegation import nameserver_serials, soa_serial
from webgateway.table import format_table
from webgateway.when import date_of, minute_of

PROBE_TIMEOUT = 1.5


class Unavailable(Exception):
    """The API refused or could not be reached; the text says which."""


@dataclass
class Check:
    what: str
    where: str
    ok: bool
    detail: str


@dataclass
class Tunnel:
    """A tunnel name and its nodes as this gateway's proxy sees them (None: not seen)."""

    name: str
    owner: str | None
    nodes: int | None
    since: str | None


def tunnels_of(names: list[dict[str, Any]]) -> list[Tunnel]:
    """The tunnel names among the API's name views, with their ``tunnel_nodes``."""
    out = []
    for n in names:
        if n.get("tunnel"):
            seen = n.get("tunnel_nodes")
            out.append(Tunnel(n["name"], n.get("owner"), seen["connected"] if seen else None,
                              seen["since"] if seen else None))
    return out


def tunnel_table(tunnels: list[Tunnel]) -> str:
    table = format_table(
        ["TUNNEL", "OWNER", "NODES", "CONNECTED SINCE"],
        [[t.name, t.owner, t.nodes, minute_of(t.since)] for t in tunnels])
    if any(t.nodes is None for t in tunnels):
        table += "\n(nodes unknown: the API runs without the proxy in its process)"
    return table


@dataclass
class Status:
    url: str
    zone: str = ""
    serial: int | None = None
    services: list[Check] = field(default_factory=list)
    nameservers: list[Check] = field(default_factory=list)
    counts: dict[str, int | None] = field(default_factory=dict)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    tunnels: list[Tunnel] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    note: str = ""
    fleet: list[dict[str, Any]] = field(default_factory=list)  # GET /v1/fleet's gateways

    @property
    def healthy(self) -> bool:
        return (all(c.ok for c in self.services + self.nameservers) and not self.failures
                and not any(g.get("stale") for g in self.fleet))

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"healthy": self.healthy}


def assess_ns(observed: dict[str, int | str], serial: int | None, what: str) -> list[Check]:
    """One check per server: it must serve the store's serial (an int error is text)."""
    out = []
    for where, got in sorted(observed.items()):
        if isinstance(got, str):
            out.append(Check(what, where, False, f"does not serve the zone: {got}"))
        elif serial is not None and got != serial:
            out.append(Check(what, where, False, f"serves serial {got}, the store has {serial}"))
        else:
            out.append(Check(what, where, True, f"serial {got}"))
    return out


def failures_of(certs: list[dict[str, Any]], domains: list[dict[str, Any]]) -> list[str]:
    """What went wrong lately, from the same views the API gives (certificates, domains)."""
    out = []
    for c in certs:
        if c.get("last_error") or c.get("state") == "failed":
            retry = f" (next try {minute_of(c['next_attempt'])})" if c.get("next_attempt") else ""
            out.append(f"certificate {c['id']}: {c.get('last_error') or c['state']}{retry}")
    for d in domains:
        # dropped/expired claims are closed business (another owner proved the domain,
        # or nobody did in time), not something going wrong on the gateway
        if d.get("state") == "pending" and d.get("detail"):
            out.append(f"domain {d['fqdn']}: {d['detail']}")
    return out


def cert_rows(certs: list[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            c.get("id"),
            ", ".join(c.get("domains") or []),
            c.get("issuer"),
            date_of(c.get("not_after")),
            c.get("days_left"),
            c.get("state"),
        ]
        for c in certs
    ]


CERT_HEADERS = ["NAME", "SANS", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATE"]


def render(st: Status) -> str:
    parts = [f"webgateway status: {st.zone or '?'} via {st.url}"]
    parts.append(
        format_table(
            ["SERVICE", "ADDRESS", "STATE", "DETAIL"],
            [[c.what, c.where, "up" if c.ok else "DOWN", c.detail] for c in st.services],
        )
    )
    if st.nameservers:
        parts.append(
            format_table(
                ["NAME SERVER", "STATE", "DETAIL"],
                [[c.where, "ok" if c.ok else "FIX", c.detail] for c in st.nameservers],
            )
        )
    if st.certificates:
        rows = [
            [*row, c.get("last_error")]
            for row, c in zip(cert_rows(st.certificates), st.certificates, strict=True)
        ]
        parts.append(format_table([*CERT_HEADERS, "LAST ERROR"], rows))
    else:
        parts.append("no certificates yet")
    if st.tunnels:
        parts.append(tunnel_table(st.tunnels))
    parts.append(
        format_table(
            [k.upper() for k in st.counts], [list(st.counts.values())] if st.counts else []
        )
    )
    if st.fleet:
        parts.append(render_fleet(st.fleet))
    if st.failures:
        parts.append("recent failures:\n" + "\n".join(f"  {f}" for f in st.failures))
    else:
        parts.append("no recent failures")
    if st.note:
        parts.append(st.note)
    return "\n\n".join(parts)


def render_fleet(gateways: list[dict[str, Any]]) -> str:
    """The fleet's gateways (``GET /v1/fleet``): where each listens, its last heartbeat,
    and the tunnel names it holds a live tunnel for."""
    rows = [
        [g["id"], ", ".join(g["ipv4"] + g["ipv6"]) or "-", ", ".join(g["dns"]) or "-",
         ", ".join(g["https"]) or "-", f"{g['seen_seconds_ago']:.0f} s ago",
         "STALE" if g["stale"] else "ok", ", ".join(g["tunnels"]) or "-"]
        for g in gateways
    ]
    return format_table(["GATEWAY", "PUBLIC", "DNS", "HTTPS", "HEARTBEAT", "STATE", "TUNNELS"],
                        rows)


# ---------------------------------------------------------------- gathering (I/O)


def _local(hp: HostPort) -> str:
    """Where to reach a listener: its address, or loopback when it listens on all."""
    if hp.host.is_unspecified:
        return "::1" if isinstance(hp.host, ipaddress.IPv6Address) else "127.0.0.1"
    return str(hp.host)


def _tcp_up(hp: HostPort) -> Check:
    try:
        with socket.create_connection((_local(hp), hp.port), timeout=PROBE_TIMEOUT):
            return Check("proxy", str(hp), True, "accepts connections")
    except OSError as e:
        return Check("proxy", str(hp), False, e.strerror or str(e))


def gather_fleet(get: Callable[[str], Any], st: Status) -> None:
    """The fleet section (admin only: an owner's token gets nothing here, and no error)."""
    try:
        st.fleet = list(get("/v1/fleet")["gateways"])
    except Unavailable:
        st.fleet = []


def gather(get: Callable[[str], Any], url: str, config: Config | None) -> Status:
    """Ask the API (``get`` raises Unavailable) and, with a config, the local listeners
    and every listed name server."""
    st = Status(url=url)
    try:
        health = get("/healthz")
        st.serial = int(health["serial"])
        st.services.append(Check("api", url, True, f"store serial {st.serial}"))
    except Unavailable as e:
        st.services.append(Check("api", url, False, str(e)))
    views: dict[str, list[dict[str, Any]]] = {}
    for key in ("names", "domains", "certificates", "owners"):
        try:
            views[key] = get(f"/v1/{key}")[key]
        except Unavailable:
            views[key] = []
            st.counts[key] = None
        else:
            st.counts[key] = len(views[key])
    st.counts = {k: st.counts[k] for k in ("owners", "names", "domains")}
    gather_fleet(get, st)
    st.certificates = views["certificates"]
    st.tunnels = tunnels_of(views["names"])
    st.failures = failures_of(views["certificates"], views["domains"])
    if config is None:
        st.note = "give --config FILE to check dnsd, the proxy and every listed name server"
        return st
    st.zone = config.zone.name
    dns = {
        str(hp): soa_serial(st.zone, _local(hp), hp.port) for hp in config.dns.listen
    }
    st.services += assess_ns(dns, st.serial, "dnsd")
    st.services += [_tcp_up(hp) for hp in (*config.proxy.https_listen, *config.proxy.http_listen)]
    if config.acme is None:
        st.note = "certd is off (no [acme] section): no certificate is requested"
    st.nameservers = assess_ns(nameserver_serials(config), st.serial, "ns")
    return st
