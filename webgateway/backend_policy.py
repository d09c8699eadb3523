"""Which backend addresses the gateway may connect to, judged on what an address reaches.

An address is judged on every IPv4 address it reaches, not on how it is spelled:
``[::ffff:127.0.0.1]`` is loopback, ``[64:ff9b::a9fe:a9fe]`` is the cloud metadata
service through NAT64. Spellings of IPv4 (mapped, compatible, SIIT-translated) are judged
on the IPv4 alone; translator and tunnel prefixes (NAT64, 6to4, Teredo) on the IPv6
address *and* on the IPv4 they lead to. A backend that is one of the gateway's own
listeners is a loop and is refused even where loopback backends are allowed.

The API applies this when a name is written and the proxy again before each connect,
so neither a config change nor a row from an older version can widen it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from webgateway.addresses import HostPort, IPAddress
from webgateway.config import Config

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64_WKP: Final = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_THIS_NETWORK: Final = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
_CACHE_MAX: Final = 65536


@dataclass(frozen=True)
class Refusal:
    rule: str  # loop, unspecified, broadcast, multicast, link_local, loopback, own_address,
    # outside_backend_networks
    detail: str  # says which rule and what to do: it goes back to the API client


def _rfc6052(ip: ipaddress.IPv6Address, prefix_len: int) -> ipaddress.IPv4Address:
    """The IPv4 embedded after a NAT64 prefix of ``prefix_len`` bits (bits 64-71 skipped)."""
    bits = f"{int(ip):0128b}"
    v4 = bits[96:] if prefix_len >= 96 else (bits[prefix_len:64] + bits[72:])[:32]
    return ipaddress.IPv4Address(int(v4, 2))


def reached(ip: IPAddress) -> tuple[tuple[IPAddress, str], ...]:
    """Every address a connect to ``ip`` reaches, each with how (``""``: as written)."""
    if ip.version == 4:
        return ((ip, ""),)
    assert isinstance(ip, ipaddress.IPv6Address)
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED:
        return ((low, "IPv4-mapped"),)
    if ip in _TRANSLATED:
        return ((low, "IPv4-translated"),)
    if ip in _COMPATIBLE and int(ip) > 1:
        return ((low, "IPv4-compatible"),)
    if ip in _NAT64_WKP:
        return ((ip, ""), (low, "NAT64"))
    if ip in _NAT64_LOCAL:
        # The local-use prefix may be cut at any RFC 6052 length: judge every reading but
        # those in 0.0.0.0/8, which no translator maps to (the zero bits of a shorter form).
        readings = {_rfc6052(ip, n) for n in (48, 56, 64, 96)}
        return ((ip, ""), *((v4, "NAT64") for v4 in sorted(readings) if v4 not in _THIS_NETWORK))
    if ip.sixtofour is not None:
        return ((ip, ""), (ip.sixtofour, "6to4"))
    if ip.teredo is not None:
        server, client = ip.teredo
        return ((ip, ""), (server, "Teredo server"), (client, "Teredo client"))
    return ((ip, ""),)


class BackendPolicy:
    """The rules one gateway applies to a backend address; immutable once built."""

    def __init__(
        self,
        *,
        gateway_addresses: Iterable[IPAddress] = (),
        listeners: Iterable[tuple[str, HostPort]] = (),
        allow_loopback: bool = False,
        networks: Iterable[IPNetwork] = (),
    ) -> None:
        self.allow_loopback = allow_loopback
        self.networks = tuple(networks)
        self._listeners: dict[HostPort, str] = {}
        self._wildcard_ports: dict[int, str] = {}
        self._own: set[IPAddress] = set(gateway_addresses)
        self._add_listeners(listeners)
        self._verdicts: dict[HostPort, Refusal | None] = {}

    def _add_listeners(self, listeners: Iterable[tuple[str, HostPort]]) -> None:
        for key, hp in listeners:
            if hp.port == 0:
                continue  # the bound port is added by the service that binds it
            if hp.host.is_unspecified:
                self._wildcard_ports.setdefault(hp.port, f"{key} {hp}")
            else:
                self._listeners.setdefault(hp, f"{key} {hp}")
                self._own.add(hp.host)

    def with_listeners(self, listeners: Iterable[tuple[str, HostPort]]) -> BackendPolicy:
        """This policy plus listeners known only once bound (a config asking for port 0)."""
        out = BackendPolicy(gateway_addresses=self._own, allow_loopback=self.allow_loopback,
                            networks=self.networks)
        out._listeners = dict(self._listeners)
        out._wildcard_ports = dict(self._wildcard_ports)
        out._add_listeners(listeners)
        return out

    def judge(self, backend: HostPort) -> Refusal | None:
        """``None`` when the gateway may connect to ``backend``, else why not."""
        try:
            return self._verdicts[backend]  # one lookup per connection, as a rule
        except KeyError:
            pass
        verdict = self._judge(backend)
        if len(self._verdicts) >= _CACHE_MAX:
            self._verdicts.clear()
        self._verdicts[backend] = verdict
        return verdict

    def _judge(self, backend: HostPort) -> Refusal | None:
        for ip, how in reached(backend.host):
            what = f"backend {backend}" + (f" reaches {ip} ({how})" if how else "")
            refusal = self._rule(ip, backend.port, what)
            if refusal is not None:
                return refusal
        return None

    def _is_own(self, ip: IPAddress) -> bool:
        return ip.is_loopback or ip in self._own

    def _rule(self, ip: IPAddress, port: int, what: str) -> Refusal | None:
        listener = self._listeners.get(HostPort(ip, port))
        if listener is None and self._is_own(ip):
            listener = self._wildcard_ports.get(port)
        if listener is not None:
            return Refusal("loop", f"{what}: that is the gateway's own listener ({listener});"
                           " a name pointing back at the gateway would loop. Give the address"
                           " of the service behind the gateway")
        if ip.is_unspecified or ip in _THIS_NETWORK:
            return Refusal("unspecified", f"{what}: an unspecified address reaches no one"
                           " host. Give the backend's own address")
        if ip == _BROADCAST:
            return Refusal("broadcast", f"{what}: a broadcast address is not one host."
                           " Give the backend's own address")
        if ip.is_multicast:
            return Refusal("multicast", f"{what}: a multicast address is not one host."
                           " Give the backend's unicast address")
        if ip.is_link_local:
            return Refusal("link_local", f"{what}: link-local addresses (169.254.0.0/16,"
                           " fe80::/10, the cloud metadata service 169.254.169.254) are"
                           " refused. Give a routable address (LAN, overlay, global)")
        if ip.is_loopback and not self.allow_loopback:
            return Refusal("loopback", f"{what}: loopback addresses reach the gateway"
                           " itself and are refused. Give the backend's LAN or overlay"
                           " address")
        if ip in self._own and not self.allow_loopback:
            return Refusal("own_address", f"{what}: that is one of the gateway's own"
                           " addresses, which reach the gateway host itself. Give the"
                           " address of the service behind the gateway")
        if self.networks and not any(ip in net for net in self.networks):
            allowed = ", ".join(map(str, self.networks))
            return Refusal("outside_backend_networks", f"{what}: outside the networks"
                           f" backends must be in ([api] backend_networks: {allowed})."
                           " Give an address inside them, or ask the operator")
        return None


def policy_of(config: Config) -> BackendPolicy:
    """The policy a gateway's config sets: its addresses, its listeners, its [api] keys."""
    listeners: list[tuple[str, HostPort]] = [
        *(("dns.listen", a) for a in config.dns.listen),
        *(("proxy.https_listen", a) for a in config.proxy.https_listen),
        *(("proxy.http_listen", a) for a in config.proxy.http_listen),
        ("api.listen", config.api.listen),
    ]
    return BackendPolicy(
        gateway_addresses=(*config.zone.gateway_ipv4, *config.zone.gateway_ipv6),
        listeners=listeners,
        allow_loopback=config.api.allow_loopback_backends,
        networks=config.api.backend_networks,
    )
