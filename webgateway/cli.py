"""The ``webgateway`` command: run the services, and a small client for the owners' API.

User mistakes end with one line on stderr and a non-zero exit, never a traceback:
exit 2 for a bad config or command line, 1 for a refused request or unreachable API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from webgateway.config import Config, ConfigError, load_config

log = logging.getLogger("webgateway")

SERVICES = ("dnsd", "certd", "proxy", "api")


class CliError(Exception):
    """A failure to report as one line (exit status in ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    _setup_logging(config.log.level)
    if args.command == "certd" and config.acme is None:
        raise ConfigError("acme", "certd needs an [acme] section")
    _run_async(serve(config, services_for(config, args.command)))
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
    if cert:
        extra = f" - {cert['last_error']}" if cert.get("last_error") else ""
        print(f"certificate: {cert['state']}{extra}")


def _print_domain(d: dict[str, Any]) -> None:
    print(f"domain:      {d['fqdn']} -> {d['name']}")
    print(f"state:       {d['state']}{' - ' + d['detail'] if d.get('detail') else ''}")
    cert = d.get("certificate") or {}
    if cert:
        print(f"certificate: {cert['state']}")
    print("create these DNS records at your DNS provider:")
    for r in d["records"]:
        print(f"  {r['name']}.  CNAME  {r['target']}.")
    alt = d.get("apex_alternative") or {}
    addrs = [*alt.get("A", []), *alt.get("AAAA", [])]
    if addrs:
        print(f"  (at a zone apex, where CNAME is not allowed: A/AAAA {' '.join(addrs)})")


def cmd_owner_add(args: argparse.Namespace) -> int:
    if args.config:
        from webgateway.sqlite_store import SqliteStore
        from webgateway.tokens import hash_token, new_token

        config = load_config(args.config)

        async def add() -> str:
            store = SqliteStore(config.store.path)
            await store.open()
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


def cmd_name_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "backends": args.backend,
        "tls": "passthrough" if args.passthrough else "terminate",
    }
    if args.proxy_protocol:
        body["proxy_protocol"] = True
    if args.http2:
        body["http2"] = True
    _print_name(Client.from_env().call("PUT", f"/v1/names/{_quote(args.label)}", body))
    return 0


def cmd_name_ls(args: argparse.Namespace) -> int:
    names = Client.from_env().call("GET", "/v1/names")["names"]
    if not names:
        print("no names yet; add one with: webgateway name add LABEL --backend ADDR:PORT")
        return 0
    width = max(len(n["fqdn"]) for n in names)
    for n in names:
        cert = (n.get("certificate") or {}).get("state", "-")
        print(f"{n['fqdn']:<{width}}  {n['tls']:<11}  cert:{cert:<8}  {', '.join(n['backends'])}")
    return 0


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
    if not domains:
        print("no custom domains yet; add one with: webgateway domain add FQDN --name LABEL")
    for d in domains:
        cert = (d.get("certificate") or {}).get("state", "-")
        print(f"{d['fqdn']}  -> {d['name']}  {d['state']}  cert:{cert}")
    return 0


def cmd_domain_show(args: argparse.Namespace) -> int:
    _print_domain(Client.from_env().call("GET", f"/v1/domains/{_quote(args.fqdn)}"))
    return 0


def cmd_domain_rm(args: argparse.Namespace) -> int:
    Client.from_env().call("DELETE", f"/v1/domains/{_quote(args.fqdn)}")
    print(f"domain {args.fqdn} removed")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from webgateway.delegation import run_check

    config = load_config(args.config)
    return run_check(config, args.resolver)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other user mistake
        raise CliError(f"{self.prog}: {message} (see --help)", 2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="webgateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

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

    owner = sub.add_parser("owner", help="manage owners (admin)").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    oa = owner.add_parser("add", help="create an owner and print its token")
    oa.add_argument("name")
    oa.add_argument("--config", help="write to the local store instead of calling the API")
    oa.set_defaults(func=cmd_owner_add)

    names = sub.add_parser("name", help="manage your names").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    na = names.add_parser("add", help="reserve a name (or update it)")
    na.add_argument("label")
    na.add_argument("--backend", action="append", required=True, metavar="ADDR:PORT")
    na.add_argument("--passthrough", action="store_true", help="forward TLS untouched")
    na.add_argument("--proxy-protocol", action="store_true", help="send PROXY v2 to backends")
    na.add_argument("--http2", action="store_true", help="the backend speaks h2 (offer ALPN h2)")
    na.set_defaults(func=cmd_name_add)
    names.add_parser("ls", help="list your names").set_defaults(func=cmd_name_ls)
    ns = names.add_parser("show", help="show one name")
    ns.add_argument("label")
    ns.set_defaults(func=cmd_name_show)
    nr = names.add_parser("rm", help="release a name")
    nr.add_argument("label")
    nr.set_defaults(func=cmd_name_rm)

    domain = sub.add_parser("domain", help="manage custom domains").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    da = domain.add_parser("add", help="attach a domain to a name; prints the CNAMEs to create")
    da.add_argument("fqdn")
    da.add_argument("--name", required=True, metavar="LABEL")
    da.set_defaults(func=cmd_domain_add)
    domain.add_parser("ls", help="list your domains").set_defaults(func=cmd_domain_ls)
    ds = domain.add_parser("show", help="show one domain")
    ds.add_argument("fqdn")
    ds.set_defaults(func=cmd_domain_show)
    dr = domain.add_parser("rm", help="detach a domain")
    dr.add_argument("fqdn")
    dr.set_defaults(func=cmd_domain_rm)

    ck = sub.add_parser("check", help="is the zone delegated to us correctly?")
    ck.add_argument("--config", required=True)
    ck.add_argument("--resolver", metavar="HOST:PORT", help="recursive resolver to ask")
    ck.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
