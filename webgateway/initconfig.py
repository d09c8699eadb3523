"""``webgateway init``: write a first configuration for a server, validated before it lands.

The text is rendered from the operator's answers (pure), parsed back with the same loader
``webgateway run`` uses (so a file that init writes always starts), and written with
``O_EXCL``: an existing configuration is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from webgateway.config import Config, ConfigError, parse_config
from webgateway.dnsname import is_within

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Answers:
    zone: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...] = ()
    email: str = ""
    nameservers: tuple[str, ...] = ()  # default: ns1.ZONE
    state_dir: str = "/var/lib/webgateway"
    acme_directory: str = LETSENCRYPT
    acme: bool = True


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these values)."""
    return json.dumps(value)


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _listen(a: Answers, port: int) -> str:
    return _list([f"0.0.0.0:{port}"] + ([f"[::]:{port}"] if a.ipv6 else []))


def render(a: Answers, now: dt.datetime | None = None) -> str:
    zone = a.zone.strip().rstrip(".").lower()
    ns_names = list(a.nameservers) or [f"ns1.{zone}"]
    glue = [*a.ipv4, *a.ipv6]
    ns = ", ".join(
        f"{_q(n)} = {_list(glue if is_within(n, zone) else [])}" for n in ns_names
    )
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    lines = [
        f"# webgateway configuration, written by `webgateway init` on {stamp}.",
        "# Every key is checked at start-up; README.md lists them all.",
        "",
        "[zone]",
        f"name = {_q(zone)}",
        f"gateway_ipv4 = {_list(list(a.ipv4))}",
        f"gateway_ipv6 = {_list(list(a.ipv6))}",
        f"nameservers = {{ {ns} }}   # NS + glue we serve; the parent zone must match",
        "ttl = 300",
        "negative_ttl = 30",
        "",
        "[dns]",
        f"listen = {_listen(a, 53)}",
        "",
    ]
    if a.acme:
        lines += ["[acme]", f"directory = {_q(a.acme_directory)}"]
        if a.email:
            lines.append(f"email = {_q(a.email)}")
        lines.append("")
    else:
        lines += ["# no [acme] section: no certificate is requested", ""]
    lines += [
        "[proxy]",
        f"https_listen = {_listen(a, 443)}",
        f"http_listen = {_listen(a, 80)}",
        "",
        "[api]",
        'listen = "127.0.0.1:8000"   # the owners\' API and the dashboard (see README)',
        f"admin_token_file = {_q(a.state_dir + '/admin.token')}",
        "",
        "[store]",
        f"path = {_q(a.state_dir + '/webgateway.db')}",
        f"certs_dir = {_q(a.state_dir + '/certs')}",
        "",
    ]
    return "\n".join(lines)


# the command-line flag behind each key init writes, so an error names what to fix
_FLAGS = {
    "zone.name": "--zone",
    "zone.gateway_ipv4": "--ipv4",
    "zone.gateway_ipv6": "--ipv6",
    "zone.nameservers": "--ns",
    "acme.email": "--email",
    "acme.directory": "--acme-directory",
    "store.path": "--state-dir",
    "store.certs_dir": "--state-dir",
    "api.admin_token_file": "--state-dir",
}


class InitError(Exception):
    pass


def validate(text: str, base: Path) -> Config:
    """The config ``text`` describes, checked by the loader ``run`` uses; InitError names
    the flag to fix."""
    try:
        return parse_config(tomllib.loads(text), base)
    except ConfigError as e:
        raise InitError(f"{_FLAGS.get(e.key, e.key)}: {e.reason}") from None


def check_addresses(a: Answers) -> None:
    if not a.ipv4 and not a.ipv6:
        raise InitError("--ipv4: give the gateway's public address (--ipv6 too if it has one)")
    for flag, values, version in (("--ipv4", a.ipv4, 4), ("--ipv6", a.ipv6, 6)):
        for v in values:
            try:
                ip = ipaddress.ip_address(v)
            except ValueError:
                raise InitError(f"{flag}: {v!r} is not an IP address") from None
            if ip.version != version:
                raise InitError(f"{flag}: {v} is not an IPv{version} address")


def write_new(path: Path, text: str) -> None:
    """Write ``text`` to a new file; refuse when ``path`` exists (never overwrite)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise InitError(f"{path} exists already; move it away or choose --output") from None
    except OSError as e:
        raise InitError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
