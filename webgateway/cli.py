"""The ``webgateway`` command: run the services, and a small client for the owners' API.

User mistakes end with one line on stderr and a non-zero exit, never a traceback:
exit 2 for a bad config or command line, 1 for a refused request or unreachable API.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from webgateway.config import Config, ConfigError, LogConfig, load_config
from webgateway.initconfig import (
    LETSENCRYPT,
    Answers,
    InitError,
    check_addresses,
    render,
    validate,
    write_new,
)
from webgateway.logsetup import configure as configure_logging
from webgateway.status import CERT_HEADERS, cert_rows
from webgateway.table import format_table
from webgateway.when import date_of, minute_of, rfc3339

log = logging.getLogger("webgateway")

SERVICES = ("dnsd", "certd", "proxy", "api")


class CliError(Exception):
    """A failure to report as one line (exit status in ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _run_async(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def services_for(config: Config, command: str) -> list[str]:
    if command != "run":
        return [command]
    names = ["dnsd", "proxy", "api"]
    if config.acme is not None:
        names.insert(1, "certd")
    return names


def cmd_serve(args: argparse.Namespace) -> int:
    from webgateway.supervisor import serve

    config = load_config(args.config)
    configure_logging(config.log)
    if args.command == "certd" and config.acme is None:
        raise ConfigError("acme", "certd needs an [acme] section")
    from webgateway.store import StoreError

    try:
        _run_async(serve(config, services_for(config, args.command)))
    except StoreError as e:  # e.g. PostgreSQL unreachable at start-up: one line, no traceback
        raise CliError(f"the store cannot be opened: {e}") from None
    return 0


# ---------------------------------------------------------------- API client


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls) -> Client:
        url = os.environ.get("WEBGATEWAY_URL", "http://127.0.0.1:8000")
        token = os.environ.get("WEBGATEWAY_TOKEN", "")
        if not token:
            raise CliError("set WEBGATEWAY_TOKEN to your API token", 2)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise CliError(f"WEBGATEWAY_URL {url!r} is not an http(s) URL", 2)
        return cls(url, token)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
                detail = f"{err['detail']} ({e.code} {err['error']})"
            except (ValueError, KeyError, TypeError):
                detail = f"HTTP {e.code} {e.reason}"
            raise CliError(detail) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the API at {self.url}: {reason}") from None
        return json.loads(raw) if raw else None


def _quote(label: str) -> str:
    return urllib.parse.quote(label, safe="")


def _print_name(n: dict[str, Any]) -> None:
    cert = n.get("certificate") or {}
    print(f"name:        {n['name']}")
    print(f"fqdn:        {n['fqdn']}")
    print(f"backends:    {', '.join(n['backends'])}")
    print(f"tls:         {n['tls']}{' (PROXY protocol v2)' if n.get('proxy_protocol') else ''}")
    if n.get("tunnel"):
        print("tunnel:      yes (nodes dial in with the name's tunnel token)")
    if cert:
        extra = f" - {cert['last_error']}" if cert.get("last_error") else ""
        print(f"certificate: {cert['state']}{extra}")


def _print_domain(d: dict[str, Any]) -> None:
    print(f"domain:      {d['fqdn']} -> {d['name']}")
    if "owner" in d:
        print(f"owner:       {d['owner']}")
    print(f"state:       {d['state']}{' - ' + d['detail'] if d.get('detail') else ''}")
    if d.get("expires"):
        print(f"expires:     {minute_of(d['expires'])} unless the CNAMEs below are seen before")
    cert = d.get("certificate") or {}
    if cert:
        print(f"certificate: {cert['state']}")
    if not d["records"]:
        return
    print("create these DNS records at your DNS provider:")
    for r in d["records"]:
        print(f"  {r['name']}.  CNAME  {r['target']}.")
    alt = d.get("apex_alternative") or {}
    addrs = [*alt.get("A", []), *alt.get("AAAA", [])]
    if addrs:
        print(f"  (at a zone apex, where CNAME is not allowed: A/AAAA {' '.join(addrs)})")


def cmd_owner_add(args: argparse.Namespace) -> int:
    if args.config:
        from webgateway.storefactory import open_store
        from webgateway.tokens import hash_token, new_token

        config = load_config(args.config)

        async def add() -> str:
            store = await open_store(config.store)
            try:
                token = new_token()
                await store.create_owner(args.name, hash_token(token))
                return token
            finally:
                await store.close()

        from webgateway.store import StoreError

        try:
            token = asyncio.run(add())
        except StoreError as e:
            raise CliError(str(e)) from None
    else:
        token = Client.from_env().call("POST", "/v1/owners", {"name": args.name})["token"]
    print(token)
    print(f"owner {args.name!r} created; the token above is shown only once", file=sys.stderr)
    return 0


def cmd_owner_ls(args: argparse.Namespace) -> int:
    owners = Client.from_env().call("GET", "/v1/owners")["owners"]
    rows: list[list[object]] = [
        [o["name"], date_of(rfc3339(o["created"])), o["names"], o["domains"]] for o in owners
    ]
    empty = "no owners yet; add one with: webgateway owner add NAME"
    return _listing(args, owners, ["OWNER", "SINCE", "NAMES", "DOMAINS"], rows, empty)


def cmd_owner_rm(args: argparse.Namespace) -> int:
    r = Client.from_env().call("DELETE", f"/v1/owners/{_quote(args.name)}")
    names, domains = r["names"], r["domains"]
    print(
        f"owner {r['name']} removed with {len(names)} name(s)"
        f"{': ' + ', '.join(names) if names else ''}"
        f" and {len(domains)} domain(s){': ' + ', '.join(domains) if domains else ''}"
    )
    return 0


def cmd_token_rotate(args: argparse.Namespace) -> int:
    body = {"owner": args.owner} if args.owner else None
    r = Client.from_env().call("POST", "/v1/token/rotate", body)
    print(r["token"])
    print(
        f"the token of owner {r['owner']!r} is replaced: the old one no longer works;"
        " the token above is shown only once",
        file=sys.stderr,
    )
    return 0


def cmd_name_add(args: argparse.Namespace) -> int:
    """Send only what the user gave: on an existing name the rest stays as it is."""
    given = {
        "backends": args.backend,
        "tls": args.tls,
        "proxy_protocol": args.proxy_protocol,
        "http2": args.http2,
        "tunnel": args.tunnel,
    }
    body = {k: v for k, v in given.items() if v is not None}
    n = Client.from_env().call("PUT", f"/v1/names/{_quote(args.label)}", body)
    _print_name(n)
    if "tunnel_token" in n:
        _print_tunnel_token(n["name"], n["fqdn"], n["tunnel_token"])
    return 0


def _print_tunnel_token(label: str, fqdn: str, token: str) -> None:
    zone = fqdn.split(".", 1)[1]
    print(f"tunnel token: {token}")
    print("shown only once; on the node run:", file=sys.stderr)
    print(f"  webgateway tunnel --gateway {zone} --name {label} --token TOKEN"
          " --to 127.0.0.1:8080", file=sys.stderr)


def cmd_name_rotate_tunnel_token(args: argparse.Namespace) -> int:
    client = Client.from_env()
    r = client.call("POST", f"/v1/names/{_quote(args.label)}/tunnel-token")
    n = client.call("GET", f"/v1/names/{_quote(args.label)}")
    _print_tunnel_token(r["name"], n["fqdn"], r["tunnel_token"])
    return 0


def cmd_tunnel(args: argparse.Namespace) -> int:
    from tunnel.node import run_node
    from tunnel.settings import load

    flags = {"gateway": args.gateway, "name": args.name, "token": args.token,
             "token_file": args.token_file, "to": args.to, "ca": args.ca,
             "server_name": args.server_name, "pool": args.pool,
             "low_water": args.low_water, "shrink_after": args.shrink_after,
             "preconnect": args.preconnect}
    settings = load(flags, args.config)
    configure_logging(LogConfig(level=args.log_level))
    _run_async(run_node(settings))
    return 0


def _listing(
    args: argparse.Namespace,
    items: list[dict[str, Any]],
    headers: list[str],
    rows: list[list[object]],
    empty: str,
) -> int:
    """Print a listing: ``--json`` gives the API's objects, else aligned columns."""
    if args.json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(empty)
    else:
        print(format_table(headers, rows))
    return 0


def _with_owner(
    items: list[dict[str, Any]], headers: list[str], rows: list[list[object]]
) -> tuple[list[str], list[list[object]]]:
    """The admin's listings carry each row's owner: show it as the second column."""
    if not any("owner" in i for i in items):
        return headers, rows
    return (
        [headers[0], "OWNER", *headers[1:]],
        [[r[0], i.get("owner"), *r[1:]] for r, i in zip(rows, items, strict=True)],
    )


def cmd_name_ls(args: argparse.Namespace) -> int:
    names = Client.from_env().call("GET", "/v1/names")["names"]
    headers, rows = _with_owner(
        names,
        ["NAME", "TLS", "CERT", "EXPIRES", "BACKENDS"],
        [
            [
                n["fqdn"],
                n["tls"],
                (n.get("certificate") or {}).get("state"),
                date_of((n.get("certificate") or {}).get("not_after")),
                ", ".join(n["backends"]),
            ]
            for n in names
        ],
    )
    empty = "no names yet; add one with: webgateway name add LABEL --backend ADDR:PORT"
    return _listing(args, names, headers, rows, empty)


def cmd_name_show(args: argparse.Namespace) -> int:
    _print_name(Client.from_env().call("GET", f"/v1/names/{_quote(args.label)}"))
    return 0


def cmd_name_rm(args: argparse.Namespace) -> int:
    Client.from_env().call("DELETE", f"/v1/names/{_quote(args.label)}")
    print(f"name {args.label} removed")
    return 0


def cmd_domain_add(args: argparse.Namespace) -> int:
    d = Client.from_env().call("PUT", f"/v1/domains/{_quote(args.fqdn)}", {"name": args.name})
    _print_domain(d)
    return 0


def cmd_domain_ls(args: argparse.Namespace) -> int:
    domains = Client.from_env().call("GET", "/v1/domains")["domains"]
    headers, rows = _with_owner(
        domains,
        ["DOMAIN", "NAME", "STATE", "CERT", "DETAIL"],
        [
            [
                d["fqdn"],
                d["name"],
                d["state"] + (f" until {minute_of(d['expires'])}" if d.get("expires") else ""),
                (d.get("certificate") or {}).get("state"),
                d.get("detail"),
            ]
            for d in domains
        ],
    )
    empty = "no custom domains yet; add one with: webgateway domain add FQDN --name LABEL"
    return _listing(args, domains, headers, rows, empty)


def cmd_cert_ls(args: argparse.Namespace) -> int:
    certs = Client.from_env().call("GET", "/v1/certificates")["certificates"]
    return _listing(args, certs, CERT_HEADERS, cert_rows(certs), "no certificates yet")


def cmd_status(args: argparse.Namespace) -> int:
    from webgateway.status import Unavailable, gather, render

    config = load_config(args.config) if args.config else None
    client = _status_client(config)

    def get(path: str) -> Any:
        try:
            return client.call("GET", path)
        except CliError as e:
            raise Unavailable(str(e)) from None

    st = gather(get, client.url, config)
    print(json.dumps(st.as_json(), indent=2) if args.json else render(st))
    return 0 if st.healthy else 1


def _status_client(config: Config | None) -> Client:
    """The environment's URL and token; on the server, ``--config`` supplies both (the
    API's listen address and the admin token file) when the environment does not."""
    if config is None or os.environ.get("WEBGATEWAY_TOKEN"):
        return Client.from_env()
    listen = config.api.listen
    host = "127.0.0.1" if listen.host.is_unspecified else str(listen.host)
    if ":" in host:
        host = f"[{host}]"
    try:
        token = config.api.admin_token_file.read_text().strip()
    except OSError as e:
        raise CliError(
            f"cannot read the admin token {config.api.admin_token_file}: {e.strerror};"
            " set WEBGATEWAY_TOKEN",
            2,
        ) from None
    url = os.environ.get("WEBGATEWAY_URL", f"http://{host}:{listen.port}")
    return Client(url, token, timeout=5.0)


def cmd_domain_show(args: argparse.Namespace) -> int:
    _print_domain(Client.from_env().call("GET", f"/v1/domains/{_quote(args.fqdn)}"))
    return 0


def cmd_domain_rm(args: argparse.Namespace) -> int:
    Client.from_env().call("DELETE", f"/v1/domains/{_quote(args.fqdn)}")
    print(f"domain claim {args.fqdn} removed")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    answers = Answers(
        zone=args.zone,
        ipv4=tuple(args.ipv4 or ()),
        ipv6=tuple(args.ipv6 or ()),
        email=args.email or "",
        nameservers=tuple(args.ns or ()),
        state_dir=args.state_dir,
        acme_directory=args.acme_directory,
        acme=not args.no_acme,
    )
    out = Path(args.output)
    try:
        check_addresses(answers)
        text = render(answers)
        validate(text, out.resolve().parent)
        write_new(out, text)
    except InitError as e:
        raise CliError(f"init: {e}", 2) from None
    print(f"wrote {out}; start with: webgateway run --config {out}")
    print(f"then check the delegation with: webgateway check --config {out}", file=sys.stderr)
    return 0


def cmd_zone_ds(args: argparse.Namespace) -> int:
    """The DS records to give the parent (the keys are generated here on first use)."""
    from webgateway import zonekeys
    from webgateway.keyseal import KeySeal
    from webgateway.storefactory import open_store

    config = load_config(args.config)
    if not config.dnssec.enabled:
        raise CliError("dnssec.enabled is false: the zone is not signed, and a DS at the"
                       " parent would make every answer fail validation; set [dnssec]"
                       " enabled = true first")

    async def keys() -> list[zonekeys.ZoneKey]:
        store = await open_store(config.store)
        try:
            return await zonekeys.ensure(store, KeySeal(config.store.key))
        finally:
            await store.close()

    try:
        found = asyncio.run(keys())
    except zonekeys.KeyMaterialError as e:
        raise CliError(str(e)) from None
    for line in zonekeys.ds_lines(config.zone.name, zonekeys.for_parent(found)):
        print(line)
    print(f"give these DS records to the registrar of the parent of {config.zone.name}"
          " (replacing any other DS of the zone)", file=sys.stderr)
    return 0


def cmd_zone_rollover(args: argparse.Namespace) -> int:
    """Start a CSK rollover, or show it, or tell it the parent has the new DS."""
    from webgateway import keyroll, zonekeys
    from webgateway.delegation import parent_has_ds
    from webgateway.keyseal import KeySeal
    from webgateway.storefactory import open_store

    config = load_config(args.config)
    if not config.dnssec.enabled:
        raise CliError("dnssec.enabled is false: there is no key to roll")
    timing = keyroll.Timing.from_config(config)

    def change(keys: list[zonekeys.ZoneKey]) -> list[zonekeys.ZoneKey]:
        now = time.time()
        if args.status:
            return keys
        if args.ds_seen:
            return keyroll.confirm_ds(keys, now)
        if args.poll_parent:
            roll = keyroll.rolling(keys)
            if roll is None or roll[1].ready is None or roll[1].ds_seen is not None:
                return keys
            ds = zonekeys.ds_lines(config.zone.name, [roll[1]])[0].split(" IN DS ")[1]
            seen, why = parent_has_ds(config, args.resolver, ds)
            print(why, file=sys.stderr)
            return keyroll.confirm_ds(keys, now) if seen else keys
        return keyroll.start(keys, now, zonekeys.generate(now))

    async def run() -> list[zonekeys.ZoneKey]:
        store = await open_store(config.store)
        try:
            return await keyroll.change_stored(store, KeySeal(config.store.key), change)
        finally:
            await store.close()

    try:
        keys = asyncio.run(run())
    except (keyroll.RolloverError, zonekeys.KeyMaterialError) as e:
        raise CliError(str(e)) from None
    for line in keyroll.status_lines(keys, time.time(), timing):
        print(line)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from webgateway.check import run_check

    config = load_config(args.config)
    return run_check(config, args.resolver, args.port, fleet_only=args.fleet, label=args.name)


def _json_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--json", action="store_true", help="print JSON (the API's objects)")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other user mistake
        where = self.prog.removeprefix("webgateway").strip()
        raise CliError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)", 2)


def _usage(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command group called without its sub-command prints its help and exits 2."""

    def show(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    return show


def _group(
    sub: argparse._SubParsersAction[_Parser], name: str, helptext: str
) -> argparse._SubParsersAction[_Parser]:
    gp = sub.add_parser(name, help=helptext)
    gp.set_defaults(func=_usage(gp))
    return gp.add_subparsers(dest="action", parser_class=_Parser)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _label(text: str) -> str:
    from webgateway.dnsname import check_label

    try:
        return check_label(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _command(
    group: argparse._SubParsersAction[_Parser],
    name: str,
    helptext: str,
    func: Callable[[argparse.Namespace], int],
    *positionals: str,
) -> _Parser:
    cp = group.add_parser(name, help=helptext)
    for arg in positionals:
        cp.add_argument(arg)
    cp.set_defaults(func=func)
    return cp


def _version() -> str:
    try:
        return importlib.metadata.version("webgateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="webgateway", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"webgateway {_version()}")
    p.set_defaults(func=_usage(p))
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    for name, helptext in (
        ("run", "run every service in one process"),
        ("dnsd", "run the authoritative DNS server alone"),
        ("certd", "run the certificate daemon alone"),
        ("proxy", "run the TLS proxy alone"),
        ("api", "run the owners' API alone"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--config", required=True, help="TOML configuration file")
        sp.set_defaults(func=cmd_serve)

    owner = _group(sub, "owner", "manage owners (admin)")
    _command(owner, "add", "create an owner and print its token", cmd_owner_add, "name")\
        .add_argument("--config", help="write to the local store instead of calling the API")
    _json_flag(_command(owner, "ls", "list owners with how many names and domains they hold",
             cmd_owner_ls))
    _command(owner, "rm", "remove an owner with all its names and domains", cmd_owner_rm, "name")

    token = _group(sub, "token", "your API token")
    _command(token, "rotate", "replace a token (the old one stops working at once)",
             cmd_token_rotate).add_argument("--owner", metavar="NAME",
                                            help="admin: rotate this owner's token")

    names = _group(sub, "name", "manage your names")
    na = _command(names, "add", "reserve a name, or update it (only the options given change)",
                  cmd_name_add, "label")
    na.description = ("Reserve a name (--backend required), or update one: an update changes"
                      " only the options given and keeps the rest (--terminate switches back"
                      " from --passthrough).")
    na.add_argument("--backend", action="append", metavar="ADDR:PORT",
                    help="repeat for several; on an update, replaces the list")
    mode = na.add_mutually_exclusive_group()
    mode.add_argument("--passthrough", dest="tls", action="store_const", const="passthrough",
                      help="forward TLS untouched")
    mode.add_argument("--terminate", dest="tls", action="store_const", const="terminate",
                      help="terminate TLS with the zone's certificate (the default on create)")
    na.add_argument("--proxy-protocol", action=argparse.BooleanOptionalAction,
                    help="send PROXY v2 to backends")
    na.add_argument("--http2", action=argparse.BooleanOptionalAction,
                    help="the backend speaks h2 (offer ALPN h2)")
    na.add_argument("--tunnel", action=argparse.BooleanOptionalAction,
                    help="served by nodes that dial in (webgateway tunnel); prints their token")
    _json_flag(_command(names, "ls", "list your names (admin: everyone's, with the owner)",
                        cmd_name_ls))
    _command(names, "show", "show one name", cmd_name_show, "label")
    _command(names, "rm", "release a name", cmd_name_rm, "label")
    _command(names, "rotate-tunnel-token", "new tunnel token (the old one stops working)",
             cmd_name_rotate_tunnel_token, "label")

    tu = sub.add_parser("tunnel", help="serve a name from this (hidden) node: dial the gateway")
    tu.add_argument("--config", type=Path, help="TOML file with the same keys (flags win)")
    tu.add_argument("--gateway", action="append", metavar="HOST[:PORT]",
                    help="the gateway's HTTPS listener (port 443 by default); repeatable")
    tu.add_argument("--name", metavar="LABEL", help="the name to serve")
    tu.add_argument("--token", help="the name's tunnel token")
    tu.add_argument("--token-file", type=Path, help="read the token from this file")
    tu.add_argument("--to", metavar="HOST:PORT", help="the local service to expose")
    tu.add_argument("--ca", help="trust this CA file for the gateway (default: system roots)")
    tu.add_argument("--server-name", metavar="ZONE",
                    help="TLS server name (the gateway's zone) when --gateway is an address")
    tu.add_argument("--pool", type=int,
                    help="idle connections kept per gateway, at most (default 8)")
    tu.add_argument("--low-water", type=int, metavar="N",
                    help="top the pool up when fewer than N are spare (default 4)")
    tu.add_argument("--shrink-after", type=float, metavar="SECONDS",
                    help="keep one idle connection after this long without a stream"
                         " (default 60; 0: never)")
    tu.add_argument("--preconnect", type=float, metavar="SECONDS",
                    help="keep one connection to --to ready for the next client, at most this"
                         " long unused (default 2; 0: none)")
    tu.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    tu.set_defaults(func=cmd_tunnel)

    domain = _group(sub, "domain", "manage custom domains")
    _command(domain, "add", "claim a domain for a name; prints the CNAMEs that prove it",
             cmd_domain_add, "fqdn").add_argument("--name", required=True, metavar="LABEL")
    _json_flag(_command(domain, "ls", "list your domain claims (admin: every claim)",
                        cmd_domain_ls))
    _command(domain, "show", "show your claim: its state, or why it was dropped or expired",
             cmd_domain_show, "fqdn")
    _command(domain, "rm", "withdraw your claim (releases a domain you hold)", cmd_domain_rm,
             "fqdn")

    cert = _group(sub, "cert", "certificates")
    _json_flag(_command(cert, "ls", "certificates: SANs, issuer, expiry date and days left",
                        cmd_cert_ls))

    zone = _group(sub, "zone", "the zone's DNSSEC keys")
    _command(zone, "ds", "print the DS records to hand to the parent zone", cmd_zone_ds)\
        .add_argument("--config", required=True, help="TOML configuration file")
    roll = _command(zone, "rollover", "start a key rollover (RFC 7583 timings), or follow it",
                    cmd_zone_rollover)
    roll.add_argument("--config", required=True, help="TOML configuration file")
    how = roll.add_mutually_exclusive_group()
    how.add_argument("--status", action="store_true", help="show the keys' phases and timings")
    how.add_argument("--ds-seen", action="store_true",
                     help="confirm the parent serves the new key's DS (retires the old key"
                          " after the parent's DS TTL)")
    how.add_argument("--poll-parent", action="store_true",
                     help="ask the parent's servers for the new DS; confirm it when all have it")
    roll.add_argument("--resolver", metavar="HOST:PORT",
                      help="recursive resolver used to find the parent (--poll-parent)")

    st = sub.add_parser("status", help="the operator's one screen (exit 1 if anything is wrong)")
    st.add_argument("--config", help="also check dnsd, the proxy and every listed name server")
    _json_flag(st).set_defaults(func=cmd_status)

    ini = sub.add_parser("init", help="write a validated configuration for a new server")
    ini.add_argument("--zone", required=True, help="the zone delegated to this gateway")
    ini.add_argument("--ipv4", action="append", metavar="ADDR", help="public IPv4 (repeat)")
    ini.add_argument("--ipv6", action="append", metavar="ADDR", help="public IPv6 (repeat)")
    ini.add_argument("--email", help="ACME account contact")
    ini.add_argument("--ns", action="append", metavar="NAME", help="NS names (default ns1.ZONE)")
    ini.add_argument("--acme-directory", default=LETSENCRYPT, metavar="URL")
    ini.add_argument("--no-acme", action="store_true", help="request no certificates")
    ini.add_argument("--state-dir", default="/var/lib/webgateway", metavar="DIR")
    ini.add_argument("--output", default="webgateway.toml", metavar="FILE")
    ini.set_defaults(func=cmd_init)

    ck = sub.add_parser("check", help="is the zone delegated to us correctly?")
    ck.add_argument("--config", required=True)
    ck.add_argument("--resolver", metavar="HOST:PORT", help="recursive resolver to ask")
    ck.add_argument("--port", type=_port, help="ask our name servers on this port"
                    " (default: the port of [dns] listen)")
    ck.add_argument("--fleet", action="store_true", help="only check that every gateway"
                    " registered in the store serves the same SOA serial and certificate")
    ck.add_argument("--name", metavar="LABEL", type=_label, help="the name whose certificate"
                    " each gateway's HTTPS is asked for (default: the first terminated name)")
    ck.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that goes away (``| head``) ends it quietly with 141.

    141 is what a shell reports for a C tool killed by SIGPIPE, so ``set -o pipefail``
    scripts see the same status as for ``cat`` or ``grep``, while ``| head`` stays silent;
    0 would claim the whole output was delivered.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail too
        return 141


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except ConfigError as e:
        print(f"webgateway: config error: {e.key}: {e.reason}", file=sys.stderr)
        return 2
    except CliError as e:
        print(f"webgateway: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
