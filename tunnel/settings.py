"""The node's settings (``webgateway tunnel``): command line and/or a small TOML file.

The node is a separate program from the gateway (it runs on the hidden machine), so it
has its own small, validated tree; bad values stop it with ``KEY: reason`` like the
gateway's config. Command-line flags override the file::

    gateway = ["gw.example.com", "gw2.example.com:443"]
    name = "alice"
    token_file = "alice.tunnel-token"     # or token = "wg_..."
    to = "127.0.0.1:8080"
    # ca = "gateway-ca.pem"               # default: the system's roots
    # server_name = "gw.example.com"      # SNI; needed when gateway is an IP address
    # pool = 8                            # idle connections kept per gateway, at most
    # low_water = 4                       # top the pool up when fewer are spare
    # shrink_after = 60                   # seconds without a stream: keep one idle
    # preconnect = 2                      # seconds a spare connection to `to` waits unused
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tunnel import wire
from webgateway.config import ConfigError
from webgateway.dnsname import check_domain, check_label

DEFAULT_PORT: Final = 443
MAX_POOL: Final = 64
#: Defaults of the pool (see ``tunnel.pool``): a stream's connection comes back when it
#: ends, so back-to-back streams dial nothing; 8 idle connections and a refill below 4
#: take bursts of overlapping clients with a batch of dials every few streams, and never
#: an empty pool (a resumed dial takes ~2 ms on loopback); the price is the gateway's
#: ~24 KiB per idle connection while busy; a quiet minute shrinks it to one.
POOL: Final = 8
LOW_WATER: Final = 4
SHRINK_AFTER: Final = 60.0
#: Seconds the node keeps a spare connection to ``to`` unused (``tunnel.preconnect``).
PRECONNECT: Final = 2.0


@dataclass(frozen=True)
class Endpoint:
    host: str  # an IP address or a DNS name
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class NodeSettings:
    gateways: tuple[Endpoint, ...]
    name: str
    token: str
    to: Endpoint
    server_name: str  # SNI: the gateway's zone
    ca: Path | None = None
    pool: int = POOL
    low_water: int = LOW_WATER
    shrink_after: float = SHRINK_AFTER
    connect_timeout: float = 10.0
    preconnect: float = PRECONNECT

    def __repr__(self) -> str:  # never print the token
        return (f"NodeSettings(gateways={self.gateways}, name={self.name!r}, to={self.to},"
                f" server_name={self.server_name!r}, pool={self.pool},"
                f" low_water={self.low_water}, shrink_after={self.shrink_after},"
                f" preconnect={self.preconnect})")


def parse_endpoint(text: str, default_port: int | None) -> Endpoint:
    """``host``, ``host:port``, ``1.2.3.4:port`` or ``[v6]:port`` (port optional with a default)."""
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: write IPv6 as '[addr]:port'")
        host, rest = s[1:end], s[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: write IPv6 as '[addr]:port'")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, _, port_s = s.rpartition(":") if ":" in s else (s, "", "")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 as '[addr]:port'")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            try:
                host = check_domain(host) if "." in host else check_label(host.lower())
            except ValueError as e:
                raise ValueError(f"{text!r}: {e}") from None
    if not port_s:
        if default_port is None:
            raise ValueError(f"{text!r}: a port is required (host:port)")
        return Endpoint(host, default_port)
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Endpoint(host, int(port_s))


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a string, got {type(v).__name__}")
    return v


_KEYS: Final = ("gateway", "name", "token", "token_file", "to", "ca", "server_name", "pool",
                 "low_water", "shrink_after", "preconnect")


def load(flags: Mapping[str, Any], file: Path | None = None) -> NodeSettings:
    """Merge the TOML file (if any) and the flags (set ones win), then validate."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except OSError as e:
            raise ConfigError("config", f"cannot read {file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", f"{file} is not valid TOML: {e}") from None
        base = file.parent
        for key in raw:
            if key not in _KEYS:
                raise ConfigError(key, f"unknown key (known: {', '.join(_KEYS)})")
    for key, value in flags.items():
        if value is not None and value != []:
            # paths on the command line are relative to where the command runs
            raw[key] = str(Path(value).absolute()) if key in ("ca", "token_file") else value
            if key == "token":
                raw.pop("token_file", None)
            elif key == "token_file":
                raw.pop("token", None)
    return _validate(raw, base)


def _validate(raw: dict[str, Any], base: Path) -> NodeSettings:
    gw = raw.get("gateway")
    if gw is None:
        raise ConfigError("gateway", "give at least one gateway (HOST[:PORT])")
    gws = [gw] if isinstance(gw, str) else gw
    if not isinstance(gws, list) or not gws or len(gws) > 16:
        raise ConfigError("gateway", "a HOST[:PORT] string or a list of 1 to 16 of them")
    try:
        gateways = tuple(parse_endpoint(_str("gateway", g), DEFAULT_PORT) for g in gws)
    except ValueError as e:
        raise ConfigError("gateway", str(e)) from None
    if len(set(gateways)) != len(gateways):
        raise ConfigError("gateway", "lists one gateway twice")
    try:
        name = check_label(_str("name", raw.get("name", "")))
    except ValueError as e:
        raise ConfigError("name", str(e)) from None
    token = _token(raw, base)
    try:
        to = parse_endpoint(_str("to", raw.get("to", "")), None)
    except ValueError as e:
        raise ConfigError("to", str(e)) from None
    ca = None
    if raw.get("ca") is not None:
        ca = base / _str("ca", raw["ca"])
        if not ca.is_file():
            raise ConfigError("ca", f"{ca} is not a readable file")
    server_name = raw.get("server_name")
    if server_name is None:
        ip_gateways = [str(g) for g in gateways if g.is_ip]
        if ip_gateways:
            raise ConfigError("server_name", f"{ip_gateways[0]} is an address: give the"
                              " gateway's zone name (the TLS server name) with --server-name")
        names = {g.host for g in gateways}
        if len(names) > 1:
            raise ConfigError("server_name", "the gateways have different host names: give"
                              " the zone name with --server-name")
        server_name = names.pop()
    try:
        server_name = check_domain(_str("server_name", server_name))
    except ValueError as e:
        raise ConfigError("server_name", str(e)) from None
    pool = _int_in(raw, "pool", POOL, 1, MAX_POOL)
    low_water = _int_in(raw, "low_water", min(LOW_WATER, pool), 1, pool)
    shrink_after = _seconds(raw, "shrink_after", SHRINK_AFTER, 86400, "never shrink")
    preconnect = _seconds(raw, "preconnect", PRECONNECT, 30, "no spare connection")
    return NodeSettings(gateways, name, token, to, server_name, ca, pool, low_water,
                        shrink_after, preconnect=preconnect)


def _seconds(raw: dict[str, Any], key: str, default: float, hi: float, zero: str) -> float:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= hi:
        raise ConfigError(key, f"seconds from 0 ({zero}) to {hi:g}")
    return float(v)


def _int_in(raw: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(key, f"an integer from {lo} to {hi}" + (
            " (at most pool)" if key == "low_water" else ""))
    return v


def _token(raw: dict[str, Any], base: Path) -> str:
    if raw.get("token_file") is not None:
        path = base / _str("token_file", raw["token_file"])
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError("token_file", f"cannot read {path}: {e.strerror}") from None
        key = "token_file"
    else:
        token = _str("token", raw.get("token", "")).strip()
        key = "token"
    if not token:
        raise ConfigError("token", "give the name's tunnel token (--token or token_file)")
    if not wire.valid_token(token):
        raise ConfigError(key, f"a tunnel token is 1 to {wire.MAX_TOKEN} printable ASCII"
                          " characters")
    return token
