"""The one configuration tree, loaded from TOML and validated before anything starts.

Each key is declared once, with its parser and default, in the ``_SPEC`` tables below;
the loader walks them, so an unknown key, a wrong type or a bad value always stops
start-up with ``ConfigError(key, reason)`` -- one line an operator can act on.
"""

from __future__ import annotations

import binascii
import errno
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from webgateway.addresses import HostPort, parse_hostport, parse_ip
from webgateway.dnsname import check_domain, check_label, is_within
from webgateway.keyseal import MAKE_KEY_FILE, parse_key_file


class ConfigError(Exception):
    """A configuration key with a bad value (or a listener that cannot be bound)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class ZoneConfig:
    name: str
    gateway_ipv4: tuple[ipaddress.IPv4Address, ...]
    gateway_ipv6: tuple[ipaddress.IPv6Address, ...]
    nameservers: Mapping[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]
    ttl: int = 300
    negative_ttl: int = 30
    hostmaster: str = ""
    caa_issuers: tuple[str, ...] = ()
    caa_accounturi: bool = False
    reserved_labels: tuple[str, ...] = ()
    #: TTL of a tunnel name's A/AAAA: short, so resolvers follow its tunnels between gateways
    tunnel_ttl: int = 5


#: TSIG algorithms we sign and verify with (RFC 8945 section 6; hmac-sha256 is mandatory).
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224")


@dataclass(frozen=True)
class TsigConfig:
    """The one TSIG key of zone transfers and NOTIFY; the secret never appears in a repr."""

    name: str
    secret: bytes = field(repr=False)
    algorithm: str = "hmac-sha256"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class DnsConfig:
    listen: tuple[HostPort, ...] = field(
        default_factory=lambda: (HostPort(ipaddress.ip_address("127.0.0.1"), 5353),)
    )
    workers: int = 1
    tcp_idle_timeout: float = 10.0
    max_tcp_connections: int = 1024
    rrl_responses_per_second: int = 0  # per source /24 or /56 over UDP; 0: no limit
    rrl_slip: int = 2  # every N-th limited query gets TC=1; 0: none
    rrl_table_size: int = 65_536  # buckets (fixed memory); colliding networks share one
    secondaries: tuple[HostPort, ...] = ()
    transfer_allow: tuple[IPNetwork, ...] = ()  # empty: the secondaries' addresses
    tsig: TsigConfig | None = None

    def transfer_acl(self) -> tuple[IPNetwork, ...]:
        """Who may transfer the zone (when its TSIG also verifies)."""
        if self.transfer_allow:
            return self.transfer_allow
        return tuple(ipaddress.ip_network(s.host) for s in self.secondaries)


@dataclass(frozen=True)
class AcmeConfig:
    directory: str
    email: str = ""
    ca_bundle: Path | None = None
    resolver: HostPort | None = None
    eab_kid: str = ""
    eab_hmac_key: str = ""
    concurrency: int = 4
    propagation_timeout: float = 120.0
    renew_fraction: float = 2 / 3
    #: new orders per account the fleet may create per ``order_window`` (Let's Encrypt:
    #: 300 per 3 hours), counted in the store
    max_orders: int = 300
    order_window: float = 3 * 3600.0


@dataclass(frozen=True)
class ProxyConfig:
    https_listen: tuple[HostPort, ...] = ()
    http_listen: tuple[HostPort, ...] = ()
    workers: int = 1
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    max_connections: int = 10000
    max_connections_per_name: int = 1000
    catch_all: HostPort | None = None
    # reverse tunnels (the main process holds them all; see tunnel.gateway.PoolLimits)
    tunnel_max_idle_per_name: int = 64
    tunnel_max_waiters_per_name: int = 1024
    tunnel_failures_per_minute: int = 20


@dataclass(frozen=True)
class ApiConfig:
    listen: HostPort = field(
        default_factory=lambda: HostPort(ipaddress.ip_address("127.0.0.1"), 8000)
    )
    admin_token_file: Path = Path("admin.token")
    metrics_token_file: Path | None = None  # a scrape-only token for /metrics (off: admin only)
    max_names_per_owner: int = 100
    max_domains_per_owner: int = 20
    auth_failures_per_minute: int = 20
    allow_loopback_backends: bool = False
    backend_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    domain_claim_ttl: float = 7 * 86400.0  # seconds an unproven domain claim is kept


@dataclass(frozen=True)
class StoreConfig:
    """``path`` (SQLite, one gateway) or ``url`` (PostgreSQL, a fleet): never both."""

    path: Path = Path("var/webgateway.db")
    url: str = ""
    certs_dir: Path = Path("var/certs")
    poll_interval: float = 0.05
    timeout: float = 10.0
    #: the 32-byte secret of ``key_file`` (empty: private keys are stored unencrypted)
    key: bytes = field(default=b"", repr=False)
    #: a PostgreSQL store without ``key_file``: the operator's explicit choice
    plaintext_keys: bool = False


#: ``[log] access_log = "-"``: the access log goes to standard output.
STDOUT = Path("-")


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"
    access_log: Path | None = None  # None: off; Path("-"): standard output


@dataclass(frozen=True)
class DnssecConfig:
    enabled: bool = False
    signature_validity: float = 14 * 86400.0
    signature_refresh: float = 7 * 86400.0  # re-sign when less than this is left
    csk_lifetime: float = 0.0  # a scheduled key rollover after this long; 0: by command
    propagation_delay: float = 3600.0  # RFC 7583 Dprp: a change reaching all our servers
    parent_propagation_delay: float = 3600.0  # DprpP: a DS change reaching the parent's
    parent_ds_ttl: float = 86400.0  # TTLds: the TTL of our DS at the parent
    #: RRsets whose signatures are cached, per generation (two kept): a zone with secondaries
    #: re-signs every transfer unless this exceeds its RRsets (~2 a name, ~350 bytes each)
    signature_cache: int = 100_000


@dataclass(frozen=True)
class FleetConfig:
    """This gateway in the fleet's registry (``webgateway.fleet``).

    ``id`` empty: ``HOSTNAME/first listener``, stable across restarts. ``ipv4``/``ipv6``
    empty: those of ``[zone] gateway_ipv4/6`` the proxy listens on (all of them when it
    listens on a wildcard address: set them on each gateway of a fleet then).
    """

    id: str = ""
    ipv4: tuple[ipaddress.IPv4Address, ...] = ()
    ipv6: tuple[ipaddress.IPv6Address, ...] = ()
    heartbeat: float = 5.0
    stale_after: float = 20.0


@dataclass(frozen=True)
class Config:
    zone: ZoneConfig
    dns: DnsConfig = field(default_factory=DnsConfig)
    dnssec: DnssecConfig = field(default_factory=DnssecConfig)
    acme: AcmeConfig | None = None
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    source: Path | None = None


# ---------------------------------------------------------------- value parsers

Parser = Callable[[Any], Any]


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _int(lo: int, hi: int) -> Parser:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse


def _float(lo: float, hi: float) -> Parser:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {v}")
        return float(v)

    return parse


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def human_duration(secs: float) -> str:
    """Seconds as the largest whole unit: 86400 -> '1d', 90 -> '90s'."""
    unit = next(u for u in "dhms" if secs % _UNITS[u] == 0 or u == "s")
    return f"{secs / _UNITS[unit]:g}{unit}"


def _duration(lo: float, hi: float) -> Parser:
    """Seconds, given as a number or as '7d', '12h', '30m', '45s'."""

    def parse(v: Any) -> float:
        if isinstance(v, str):
            text = v.strip().lower()
            unit = _UNITS.get(text[-1:])
            try:
                secs = float(text[:-1]) * unit if unit else float(text)
            except ValueError:
                raise ValueError(
                    f"{v!r} is not a duration: use seconds or a number with d, h, m or s"
                    " ('7d', '12h', '30m')"
                ) from None
        elif isinstance(v, int | float) and not isinstance(v, bool):
            secs = float(v)
        else:
            raise ValueError(f"expected a duration ('7d', '12h', '30m' or seconds), got {v!r}")
        if not lo <= secs <= hi:  # also refuses nan and inf
            raise ValueError(
                f"must be between {human_duration(lo)} and {human_duration(hi)}, got {v!r}")
        return secs

    return parse


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def _list(item: Parser, *, min_items: int = 0) -> Parser:
    def parse(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {type(v).__name__}")
        if len(v) < min_items:
            raise ValueError(f"needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except ValueError as e:
                raise ValueError(f"[{i}]: {e}") from None
        if len(set(out)) != len(out):
            raise ValueError("contains duplicates")
        return tuple(out)

    return parse


def _ip_of(version: int) -> Parser:
    def parse(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        ip = parse_ip(_str(v))
        if ip.version != version:
            raise ValueError(f"{v!r} is not an IPv{version} address")
        return ip

    return parse


def _hostport(v: Any) -> HostPort:
    return parse_hostport(_str(v), allow_port_zero=True)


def _network(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    s = _str(v)
    try:
        return ipaddress.ip_network(s.strip())
    except ValueError as e:
        raise ValueError(f"{e}; write a network like '10.0.0.0/8' or 'fd00::/8'") from None


def _domain(v: Any) -> str:
    return check_domain(_str(v))


def _url(v: Any) -> str:
    s = _str(v)
    parts = urlsplit(s)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{s!r} is not an http(s) URL")
    return s


_PG_QUERY_KEYS = ("host", "port", "user", "sslmode", "application_name")


def _postgres_url(v: Any) -> str:
    """``postgresql://USER@HOST:PORT/DB`` or ``postgresql:///DB?host=/socket/dir``.

    A password is refused: it would sit in a config file and could reach a log line; libpq's
    ``PGPASSWORD`` or ``~/.pgpass`` (which asyncpg reads too) keep it out of both.
    """
    url = _str(v)
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("expected postgresql://USER@HOST:PORT/DB or postgresql:///DB?host=/dir")
    try:
        password, port = parts.password, parts.port
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as e:
        raise ValueError(f"not a valid URL: {e}") from None
    if password is not None:
        raise ValueError("holds a password: put it in PGPASSWORD or ~/.pgpass, not the config")
    if port == 0:
        raise ValueError("port 0 is not a PostgreSQL port")
    db = parts.path.removeprefix("/")
    if not db or "/" in db:
        raise ValueError("names no database: end it with /DBNAME")
    if parts.fragment:
        raise ValueError("has a #fragment")
    params = dict(query)
    for key, value in query:
        if key not in _PG_QUERY_KEYS:
            raise ValueError(f"unknown parameter {key!r} (known: {', '.join(_PG_QUERY_KEYS)})")
        if key == "host" and not value.startswith("/"):
            raise ValueError("?host= must be the absolute path of the socket directory")
        if key == "port" and not (value.isdigit() and 0 < int(value) < 65536):
            raise ValueError(f"?port= must be a port number, got {value!r}")
    if not parts.hostname and "host" not in params:
        raise ValueError("names no server: postgresql://USER@HOST:PORT/DB or ?host=/socket/dir")
    return url


def _email(v: Any) -> str:
    s = _str(v)
    if s and ("@" not in s or " " in s or s.startswith("@") or s.endswith("@")):
        raise ValueError(f"{s!r} is not an e-mail address")
    return s


def _path(v: Any) -> Path:
    s = _str(v)
    if not s:
        raise ValueError("path is empty")
    return Path(s)


def _level(v: Any) -> str:
    s = _str(v).lower()
    if s not in ("debug", "info", "warning", "error"):
        raise ValueError("must be one of debug, info, warning, error")
    return s


def _log_format(v: Any) -> str:
    s = _str(v)
    if s not in ("text", "json"):
        raise ValueError('must be "text" or "json"')
    return s


def _access_log(v: Any) -> Path | None:
    """``""`` turns the access log off, ``"-"`` sends it to standard output."""
    s = _str(v)
    if not s:
        return None
    if "\x00" in s:
        raise ValueError("path contains a NUL character")
    return Path(s)


def _catch_all(v: Any) -> HostPort:
    return parse_hostport(_str(v))


def _tsig_name(v: Any) -> str:
    s = _str(v).strip().rstrip(".").lower()
    labels = s.split(".")
    if not s or len(s) > 253 or any(not 1 <= len(x) <= 63 for x in labels):
        raise ValueError(f"{v!r} is not a key name (dot-separated labels, like 'xfr' or "
                         "'gw-xfr.example.com')")
    if not all(c.isalnum() or c in "-_." for c in s) or not s.isascii():
        raise ValueError(f"{v!r}: use only letters, digits, '-', '_' and '.' in a key name")
    return s


def _tsig_algorithm(v: Any) -> str:
    s = _str(v).strip().lower().rstrip(".")
    if s not in TSIG_ALGORITHMS:
        raise ValueError(f"unknown algorithm {v!r} (known: {', '.join(TSIG_ALGORITHMS)})")
    return s


def _tsig_secret(v: Any) -> bytes:
    """Base64 as Knot's keymgr, tsig-keygen and ``openssl rand -base64 32`` print it."""
    s = "".join(_str(v).split())
    try:
        raw = binascii.a2b_base64(s.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("is not valid base64 (generate one with: openssl rand -base64 32)"
                         ) from None
    if len(raw) < 16:
        raise ValueError(f"is {len(raw)} bytes long; use at least 16 (openssl rand -base64 32)")
    return raw


_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]{0,99}")


def _gateway_id(v: Any) -> str:
    text = _str(v)
    if not _GATEWAY_ID.fullmatch(text):
        raise ValueError(f"{text[:40]!r}: 1-100 letters, digits and . _ : / @ [ ] -,"
                         " starting with a letter or digit")
    return text


def _check_fleet(f: dict[str, Any]) -> None:
    heartbeat = f.get("heartbeat", FleetConfig.heartbeat)
    stale = f.get("stale_after", FleetConfig.stale_after)
    if stale < 3 * heartbeat:
        raise ConfigError("fleet.stale_after", f"must be at least 3 heartbeats"
                          f" ({3 * heartbeat:g} s), got {stale:g} s: one late heartbeat"
                          " would drop a live gateway")


def _nameservers(v: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(v, dict) or not v:
        raise ValueError('expected a table like { "ns1.gw.example.com" = ["203.0.113.10"] }')
    out: dict[str, tuple[Any, ...]] = {}
    for host, addrs in v.items():
        name = check_domain(host, what="name server")
        try:
            out[name] = _list(lambda a: parse_ip(_str(a)))(addrs)
        except ValueError as e:
            raise ValueError(f"{host}: {e}") from None
    return out


_SPEC: dict[str, dict[str, tuple[Parser, bool]]] = {
    # section -> key -> (parser, required)
    "zone": {
        "name": (_domain, True),
        "gateway_ipv4": (_list(_ip_of(4)), False),
        "gateway_ipv6": (_list(_ip_of(6)), False),
        "nameservers": (_nameservers, True),
        "ttl": (_int(1, 604800), False),
        "negative_ttl": (_int(0, 86400), False),
        "hostmaster": (_email, False),
        "caa_issuers": (_list(_domain), False),
        "caa_accounturi": (_bool, False),
        "reserved_labels": (_list(lambda x: check_label(_str(x))), False),
        "tunnel_ttl": (_int(1, 3600), False),
    },
    "dns": {
        "listen": (_list(_hostport, min_items=1), False),
        "workers": (_int(1, 64), False),
        "tcp_idle_timeout": (_float(0.1, 3600), False),
        "max_tcp_connections": (_int(1, 1_000_000), False),
        "rrl_responses_per_second": (_int(0, 1_000_000), False),
        "rrl_slip": (_int(0, 10), False),
        "rrl_table_size": (_int(1, 16_777_216), False),
        "secondaries": (_list(lambda v: parse_hostport(_str(v))), False),
        "transfer_allow": (_list(_network), False),
    },
    "dns.tsig": {  # a table inside [dns]
        "name": (_tsig_name, True),
        "algorithm": (_tsig_algorithm, False),
        "secret": (_tsig_secret, False),
        "secret_file": (_path, False),
    },
    "dnssec": {
        "enabled": (_bool, False),
        "signature_validity": (_duration(3 * 3600, 90 * 86400), False),
        "signature_refresh": (_duration(3600, 60 * 86400), False),
        "csk_lifetime": (_duration(0, 10 * 366 * 86400), False),
        "propagation_delay": (_duration(0, 7 * 86400), False),
        "parent_propagation_delay": (_duration(0, 7 * 86400), False),
        "parent_ds_ttl": (_duration(0, 7 * 86400), False),
        "signature_cache": (_int(1000, 100_000_000), False),
    },
    "acme": {
        "directory": (_url, True),
        "email": (_email, False),
        "ca_bundle": (_path, False),
        "resolver": (lambda v: parse_hostport(_str(v)), False),
        "eab_kid": (_str, False),
        "eab_hmac_key": (_str, False),
        "concurrency": (_int(1, 64), False),
        "propagation_timeout": (_float(1, 3600), False),
        "renew_fraction": (_float(0.1, 0.95), False),
        "max_orders": (_int(1, 1_000_000), False),
        "order_window": (_duration(60, 7 * 86400), False),
    },
    "proxy": {
        "https_listen": (_list(_hostport), False),
        "http_listen": (_list(_hostport), False),
        "workers": (_int(1, 64), False),
        "handshake_timeout": (_float(0.1, 600), False),
        "idle_timeout": (_float(1, 86400), False),
        "connect_timeout": (_float(0.1, 600), False),
        "max_connections": (_int(1, 1_000_000), False),
        "max_connections_per_name": (_int(1, 1_000_000), False),
        "catch_all": (_catch_all, False),
        "tunnel_max_idle_per_name": (_int(1, 4096), False),
        "tunnel_max_waiters_per_name": (_int(0, 1_000_000), False),
        "tunnel_failures_per_minute": (_int(1, 100_000), False),
    },
    "api": {
        "listen": (_hostport, False),
        "admin_token_file": (_path, False),
        "metrics_token_file": (_path, False),
        "max_names_per_owner": (_int(0, 1_000_000), False),
        "max_domains_per_owner": (_int(0, 1_000_000), False),
        "auth_failures_per_minute": (_int(1, 100_000), False),
        "allow_loopback_backends": (_bool, False),
        "backend_networks": (_list(_network), False),
        "domain_claim_ttl": (_duration(60, 366 * 86400), False),
    },
    "store": {
        "path": (_path, False),
        "url": (_postgres_url, False),
        "certs_dir": (_path, False),
        "poll_interval": (_float(0.005, 60), False),
        "timeout": (_float(0.1, 600), False),
        "key_file": (_path, False),
        "plaintext_keys": (_bool, False),
    },
    "fleet": {
        "id": (_gateway_id, False),
        "ipv4": (_list(_ip_of(4)), False),
        "ipv6": (_list(_ip_of(6)), False),
        "heartbeat": (_float(0.1, 300), False),
        "stale_after": (_float(0.3, 3600), False),
    },
    "log": {
        "level": (_level, False),
        "format": (_log_format, False),
        "access_log": (_access_log, False),
    },
}

_CLASSES: dict[str, type] = {
    "zone": ZoneConfig,
    "dns": DnsConfig,
    "dnssec": DnssecConfig,
    "acme": AcmeConfig,
    "proxy": ProxyConfig,
    "api": ApiConfig,
    "store": StoreConfig,
    "log": LogConfig,
    "fleet": FleetConfig,
}

_PATH_KEYS = {
    ("acme", "ca_bundle"),
    ("api", "admin_token_file"),
    ("api", "metrics_token_file"),
    ("store", "path"),
    ("store", "certs_dir"),
    ("log", "access_log"),
    ("dns.tsig", "secret_file"),
    ("store", "key_file"),
}


def _section(name: str, raw: Any, base: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected a table [{name}], got {type(raw).__name__}")
    spec = _SPEC[name]
    subs = {s.partition(".")[2] for s in _SPEC if s.startswith(name + ".")}
    for key in raw:
        if key in subs:
            continue  # a table of its own, parsed by the caller
        if key not in spec:
            raise ConfigError(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(spec))})")
    values: dict[str, Any] = {}
    for key, (parse, required) in spec.items():
        if key not in raw:
            if required:
                raise ConfigError(f"{name}.{key}", "is required")
            continue
        try:
            values[key] = parse(raw[key])
        except ValueError as e:
            raise ConfigError(f"{name}.{key}", str(e)) from None
        if (name, key) in _PATH_KEYS and values[key] not in (None, STDOUT):
            values[key] = (base / values[key]).resolve()
    return values


def _resolve_default_paths(section: str, obj: Any, base: Path) -> Any:
    updates = {
        k: (base / getattr(obj, k)).resolve()
        for (s, k) in _PATH_KEYS
        if s == section and getattr(obj, k, None) is not None
        and not getattr(obj, k).is_absolute()
    }
    return replace(obj, **updates) if updates else obj


def _check_zone(z: dict[str, Any]) -> None:
    zone = z["name"]
    z.setdefault("gateway_ipv4", ())
    z.setdefault("gateway_ipv6", ())
    for ns, addrs in z["nameservers"].items():
        if is_within(ns, zone) and not addrs:
            raise ConfigError("zone.nameservers", f"{ns} is inside {zone} and needs glue addresses")
    if not z.get("gateway_ipv4") and not z.get("gateway_ipv6"):
        raise ConfigError("zone.gateway_ipv4", "set gateway_ipv4 or gateway_ipv6 (or both)")
    if not z.get("hostmaster"):
        z["hostmaster"] = f"hostmaster@{zone}"


def _tsig(raw: Any, base: Path) -> TsigConfig:
    values = _section("dns.tsig", raw, base)
    has_secret, has_file = "secret" in values, "secret_file" in values
    if has_secret == has_file:
        raise ConfigError("dns.tsig.secret", f"key {values['name']!r}: set exactly one of "
                          "secret (base64) and secret_file")
    if has_file:
        key = "dns.tsig.secret_file"
        path: Path = values.pop("secret_file")
        try:
            text = _secret_file(key, path, TSIG_MAKE.format(path)).decode("ascii")
        except UnicodeDecodeError:
            raise ConfigError(key, f"{path} is not base64 text") from None
        try:
            values["secret"] = _tsig_secret(text)
        except ValueError as e:
            raise ConfigError(key, f"{path} {e}") from None
    return TsigConfig(**values)


#: How an operator makes a TSIG secret file (``{0}``: its path).
TSIG_MAKE = "openssl rand -base64 32 > {0}; chmod 600 {0}"
#: A secret file is a few dozen bytes; reading stops past this.
_SECRET_FILE_MAX = 4096
_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a device",
               stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def _secret_file(key: str, path: Path, make: str) -> bytes:
    """The bytes of a file holding a secret: a regular file (a FIFO would hang start-up, a
    device never end), not a symbolic link, which only its owner may read. Opened without
    blocking or following a link, and checked on the open file (nothing swaps it between
    the check and the read); ``make`` says how to make one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(key, f"{path} is a symbolic link: name the file itself") from None
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a file")
            raise ConfigError(key, f"{path} is {kind}, not a regular file: make one with {make}")
        if mode & 0o077:
            raise ConfigError(key, f"{path} is readable by others: chmod 600 {path}")
        data = os.read(fd, _SECRET_FILE_MAX + 1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _SECRET_FILE_MAX:
        raise ConfigError(key, f"{path} is larger than {_SECRET_FILE_MAX} bytes, not a secret:"
                               f" make one with {make}")
    return data


def _check_store(s: dict[str, Any]) -> None:
    """Private keys in a shared PostgreSQL are encrypted, unless the operator says not to."""
    path: Path | None = s.pop("key_file", None)
    if path is not None:
        try:
            s["key"] = parse_key_file(
                _secret_file("store.key_file", path, MAKE_KEY_FILE.format(path)), str(path))
        except ValueError as e:
            raise ConfigError("store.key_file", f"{path} {e}") from None
    if s.get("url") and path is None and not s.get("plaintext_keys"):
        raise ConfigError(
            "store.key_file", "a PostgreSQL store holds the private keys of every gateway:"
            " set key_file (openssl rand -base64 32 > store.key; chmod 600 store.key; the same"
            " file on every gateway) so they are stored encrypted, or plaintext_keys = true")


def _check_dns(d: dict[str, Any], raw: Mapping[str, Any], base: Path) -> None:
    """No open AXFR: whoever may transfer the zone must also sign with the TSIG key."""
    if "tsig" in raw:
        d["tsig"] = _tsig(raw["tsig"], base)
    if (d.get("secondaries") or d.get("transfer_allow")) and "tsig" not in d:
        key = "dns.secondaries" if d.get("secondaries") else "dns.transfer_allow"
        raise ConfigError(key, "zone transfers need a TSIG key: add [dns.tsig] with name "
                          "and secret or secret_file")


def _check_dnssec(d: dict[str, Any]) -> None:
    validity = d.get("signature_validity", DnssecConfig.signature_validity)
    refresh = d.get("signature_refresh", DnssecConfig.signature_refresh)
    if refresh > validity - 3600:
        raise ConfigError("dnssec.signature_refresh",
                          "must be at least 1h below signature_validity"
                          f" ({human_duration(validity)}),"
                          f" got {human_duration(refresh)}")
    lifetime = d.get("csk_lifetime", 0.0)
    if 0 < lifetime < 86400:
        raise ConfigError("dnssec.csk_lifetime", "must be 0 (roll by command) or at least 1d:"
                          f" a rollover itself takes hours (the parent's DS TTL), got"
                          f" {human_duration(lifetime)}")


def parse_config(raw: Mapping[str, Any], base: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML document; ``base`` anchors relative paths."""
    for name in raw:
        if name not in _CLASSES:
            raise ConfigError(name, f"unknown section (known: {', '.join(sorted(_CLASSES))})")
    if "zone" not in raw:
        raise ConfigError("zone", "the [zone] section is required")
    sections: dict[str, Any] = {}
    for name in _CLASSES:
        if name not in raw:
            continue
        values = _section(name, raw[name], base)
        if name == "zone":
            _check_zone(values)
        if name == "dns":
            _check_dns(values, raw[name], base)
        if name == "dnssec":
            _check_dnssec(values)
        if name == "fleet":
            _check_fleet(values)
        if name == "store" and "path" in values and "url" in values:
            raise ConfigError(
                "store.url", "set either path (SQLite, one gateway) or url (PostgreSQL), not both"
            )
        if name == "store":
            _check_store(values)
        sections[name] = _CLASSES[name](**values)
    for name in ("api", "store"):
        obj = sections.get(name) or _CLASSES[name]()
        sections[name] = _resolve_default_paths(name, obj, base)
    cfg = Config(**sections, source=source)
    _check_listeners(cfg)
    return cfg


def _check_listeners(cfg: Config) -> None:
    seen: dict[tuple[str, HostPort], str] = {}
    groups = [
        ("dns.listen", "udp", cfg.dns.listen),
        ("dns.listen", "tcp", cfg.dns.listen),
        ("proxy.https_listen", "tcp", cfg.proxy.https_listen),
        ("proxy.http_listen", "tcp", cfg.proxy.http_listen),
        ("api.listen", "tcp", (cfg.api.listen,)),
    ]
    for key, proto, addrs in groups:
        for a in addrs:
            if a.port == 0:
                continue
            other = seen.get((proto, a))
            if other is not None and other != key:
                raise ConfigError(key, f"{a} is also used by {other}")
            seen[(proto, a)] = key


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as e:
        raise ConfigError("config", f"cannot read {p}: {e.strerror}") from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", f"{p} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{p} is not valid TOML: {e}") from None
    cfg = parse_config(raw, p.resolve().parent, source=p.resolve())
    folders = [("store.certs_dir", cfg.store.certs_dir),
               ("api.admin_token_file", cfg.api.admin_token_file.parent)]
    if cfg.api.metrics_token_file is not None:
        folders.append(("api.metrics_token_file", cfg.api.metrics_token_file.parent))
    if not cfg.store.url:  # PostgreSQL: no database file here
        folders.insert(0, ("store.path", cfg.store.path.parent))
    if cfg.log.access_log not in (None, STDOUT):
        assert cfg.log.access_log is not None
        folders.append(("log.access_log", cfg.log.access_log.parent))
    for key, d in folders:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(key, f"cannot create {d}: {e.strerror}") from None
    return cfg
