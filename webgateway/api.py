"""The owners' REST API (aiohttp).

aiohttp because it runs on the same asyncio loop as dnsd and the proxy in the
one-process deployment, is mature and well-kept, and gives us a small, explicit
routing and middleware layer without a framework's worth of magic.

Every error is JSON ``{"error": code, "detail": text}`` with the right status; ``detail``
tells the caller what to fix. Authorization is decided here, ownership in the store
(so no code path can skip it): another owner's name is 404 to read or delete and 403
to overwrite.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from webgateway.addresses import HostPort, parse_hostport
from webgateway.backend_policy import policy_of
from webgateway.certinfo import certificate_issuer
from webgateway.config import Config
from webgateway.dnsname import (
    RESERVED_LABELS,
    check_custom_domain,
    check_domain,
    check_label,
    is_within,
    new_challenge_label,
)
from webgateway.fleet import fleet_json
from webgateway.live import LiveView, Snapshot
from webgateway.model import Certificate, Domain, DomainState, Name, Owner, TlsMode
from webgateway.openapi import OPENAPI
from webgateway.ratelimit import FailureLimiter
from webgateway.store import (
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    Store,
    StoreUnavailable,
)
from webgateway.tokens import hash_token, new_token
from webgateway.when import days_left, rfc3339

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_BACKENDS = 16

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class Caller:
    owner: Owner | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.owner is None

    @property
    def owner_filter(self) -> int | None:
        """What the caller may list: its own rows, or every row for the admin."""
        return None if self.owner is None else self.owner.id


_Owned = TypeVar("_Owned", Name, Domain)


def _visible(caller: Caller, obj: _Owned | None, what: str) -> _Owned:
    """Another owner's row is answered exactly like a missing one: 404, nothing leaked."""
    if obj is None or (caller.owner is not None and obj.owner_id != caller.owner.id):
        raise ApiError(404, "not_found", f"you have no {what}")
    return obj


def _checked_label(label: str) -> str:
    try:
        check_label(label)
    except ValueError as e:
        raise ApiError(422, "invalid_name", str(e)) from None
    return label


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


_STORE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    Forbidden: (403, "forbidden"),
    Conflict: (409, "conflict"),
    QuotaExceeded: (403, "quota_exceeded"),
    StoreUnavailable: (503, "store_unavailable"),
}


class Api:
    def __init__(self, config: Config, store: Store, registry: CollectorRegistry) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.zone = config.zone.name
        self.admin_hash = ""
        self.metrics_hash = ""  # [api] metrics_token_file's token: /metrics only
        self.live = LiveView(registry)
        self.limiter = FailureLimiter(config.api.auth_failures_per_minute)
        self.backend_policy = policy_of(config)
        self.reserved = (
            RESERVED_LABELS
            | set(config.zone.reserved_labels)
            | {
                ns[: -len(self.zone) - 1].split(".")[-1]
                for ns in config.zone.nameservers
                if ns.endswith("." + self.zone)
            }
        )
        self.requests = Counter(
            "webgateway_api_requests",
            "API requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors_middleware])
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_post("/v1/owners", self.create_owner)
        r.add_get("/v1/owners", self.list_owners)
        r.add_delete("/v1/owners/{name}", self.delete_owner)
        r.add_post("/v1/token/rotate", self.rotate_token)
        r.add_get("/v1/names", self.list_names)
        r.add_get("/v1/names/{label}", self.get_name)
        r.add_put("/v1/names/{label}", self.put_name)
        r.add_delete("/v1/names/{label}", self.delete_name)
        r.add_post("/v1/names/{label}/tunnel-token", self.rotate_tunnel_token)
        r.add_get("/v1/domains", self.list_domains)
        r.add_get("/v1/domains/{fqdn}", self.get_domain)
        r.add_put("/v1/domains/{fqdn}", self.put_domain)
        r.add_delete("/v1/domains/{fqdn}", self.delete_domain)
        r.add_get("/v1/certificates", self.list_certificates)
        r.add_get("/v1/fleet", self.fleet)

    # ---------------------------------------------------------------- plumbing
    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        try:
            resp = await handler(request)
        except ApiError as e:
            resp = _error(e.status, e.code, e.detail, e.headers)
        except tuple(_STORE_ERRORS) as e:
            status, code = _STORE_ERRORS[type(e)]
            resp = _error(status, code, str(e))
        except web.HTTPRequestEntityTooLarge:
            resp = _error(413, "too_large", f"the request body is limited to {MAX_BODY} bytes")
        except web.HTTPException as e:
            detail = {
                404: "no such path; see /v1/openapi.json",
                405: f"{request.method} is not allowed here",
            }.get(e.status, e.reason)
            resp = _error(e.status, e.reason.lower().replace(" ", "_"), detail)
        except Exception:
            log.exception("API handler failed: %s %s", request.method, route_name)
            resp = _error(500, "internal", "internal error; the operator's log has the details")
        self.requests.labels(route_name, str(resp.status)).inc()
        return resp

    def _client(self, request: web.Request) -> str:
        return request.remote or "unknown"

    async def _caller(self, request: web.Request) -> Caller:
        """Who is calling: a valid token is always let in, only refusals are limited.

        Counting refusals per address and answering 429 past the limit slows guessing and
        flags it in the log; letting a valid token through even then means a guesser
        behind the same address (a shared NAT, a proxy) cannot lock its owner out. That a
        valid token still answers tells a guesser nothing usable: tokens carry 256 random
        bits, out of reach of any guessing rate.
        """
        return await self.authenticate(self._client(request), self._bearer(request))

    def _bearer(self, request: web.Request) -> str:
        header = request.headers.get("Authorization")
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if header is not None:
                log.warning("refused a request from %s: not a bearer token",
                            self._client(request))
            raise ApiError(
                401,
                "unauthorized",
                "send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="webgateway"'},
            )
        return token.strip()

    async def caller_by_token_hash(self, digest: str) -> Caller | None:
        """Who holds the token with this hash now (a rotated or removed token: nobody)."""
        if self.admin_hash and hmac.compare_digest(digest, self.admin_hash):
            return Caller(None)
        owner = await self.store.owner_by_token_hash(digest)
        return None if owner is None else Caller(owner)

    async def authenticate(self, client: str, token: str) -> Caller:
        """The caller ``token`` names; a refusal counts against ``client`` in the limiter.

        Shared by the bearer header and the dashboard's sign-in form, so both count in
        the same failed-authentication window.
        """
        caller = await self.caller_by_token_hash(hash_token(token))
        if caller is not None:
            return caller
        wait = self.limiter.retry_after(client)
        self.limiter.failed(client)
        if wait > 0:
            log.warning(
                "refused a token from %s: unknown token, over %d failures a minute",
                client,
                self.limiter.limit,
            )
            raise ApiError(
                429,
                "too_many_attempts",
                f"too many failed authentications; retry in {int(wait) + 1} s",
                {"Retry-After": str(int(wait) + 1)},
            )
        log.warning("refused a token from %s: unknown token", client)
        raise ApiError(
            401,
            "unauthorized",
            "the token is not valid",
            {"WWW-Authenticate": 'Bearer realm="webgateway", error="invalid_token"'},
        )

    async def _admin(self, request: web.Request, action: str) -> None:
        if not (await self._caller(request)).is_admin:
            raise ApiError(403, "forbidden", f"only the admin token may {action}")

    async def _owner(self, request: web.Request) -> Owner:
        caller = await self._caller(request)
        if caller.owner is None:
            raise ApiError(403, "forbidden", "use an owner's token: names belong to owners")
        return caller.owner

    @staticmethod
    async def _body(
        request: web.Request,
        allowed: dict[str, type | tuple[type, ...]],
        required: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        if request.content_type not in ("application/json", "application/octet-stream", ""):
            raise ApiError(415, "unsupported_media_type", "send a JSON body (application/json)")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(
                400, "bad_json", "the body nests arrays or objects too deeply; send a flat object"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object")
        for key, value in body.items():
            if key not in allowed:
                raise ApiError(
                    422,
                    "unknown_field",
                    f"unknown field {key!r} (known: {', '.join(sorted(allowed))})",
                )
            if not isinstance(value, allowed[key]):
                raise ApiError(422, "invalid", f"field {key!r} has the wrong type")
        for key in required:
            if key not in body:
                raise ApiError(422, "missing_field", f"field {key!r} is required")
        return body

    # ---------------------------------------------------------------- views
    def _cert_view(self, cert: Certificate | None) -> dict[str, Any] | None:
        if cert is None:
            return {"state": "pending", "detail": "no certificate requested yet"}
        return {
            "id": cert.id,
            "state": str(cert.state),
            "domains": list(cert.domains),
            "issuer": certificate_issuer(cert.chain),
            "not_after": rfc3339(cert.not_after),
            "days_left": days_left(cert.not_after, time.time()),
            "renew_at": rfc3339(cert.renew_at),
            "failures": cert.failures,
            "next_attempt": rfc3339(cert.next_attempt),
            "last_error": cert.last_error or None,
        }

    async def certificates_view(self, caller: Caller) -> list[dict[str, Any]]:
        """The certificates a caller may see: all for the admin; for an owner, the zone
        certificate (it covers every name) and those of its own custom domains."""
        certs = await self.store.list_certificates()
        if caller.owner is not None:
            held = await self.store.list_domains(caller.owner.id)
            mine = {"zone"} | {d.fqdn for d in held if d.state.holds}
            certs = [c for c in certs if c.id in mine]
        views = [self._cert_view(c) for c in sorted(certs, key=lambda c: c.id)]
        return [v for v in views if v is not None]

    async def names_view(self, caller: Caller) -> list[dict[str, Any]]:
        """The caller's names (the admin's: everyone's, each saying whose it is)."""
        names = await self.store.list_names(caller.owner_filter)
        owners = await self.store.owner_names() if caller.is_admin else None
        live = self.live.snapshot()
        return [await self._name_view(n, owners, live) for n in names]

    async def domains_view(self, caller: Caller) -> list[dict[str, Any]]:
        domains = await self.store.list_domains(caller.owner_filter)
        owners = await self.store.owner_names() if caller.is_admin else None
        return [await self._domain_view(d, owners) for d in domains]

    async def _name_view(self, name: Name, owners: dict[int, str] | None = None,
                         live: Snapshot | None = None) -> dict[str, Any]:
        """One name as every listing shows it, with what the proxy carries for it now
        (``traffic``, and ``tunnel_nodes`` for a tunnel name: ``None`` where this process
        runs no proxy)."""
        live = live or self.live.snapshot()
        cert: dict[str, Any] | None = None
        if name.tls == TlsMode.TERMINATE:
            cert = self._cert_view(await self.store.get_certificate("zone"))
        return {
            "name": name.label,
            "fqdn": f"{name.label}.{self.zone}",
            "backends": [str(b) for b in name.backends],
            "tls": str(name.tls),
            "proxy_protocol": name.proxy_protocol,
            "http2": name.http2,
            "tunnel": name.tunnel,
            "certificate": cert,
            "traffic": live.traffic(name.label),
            "created": name.created,
            "updated": name.updated,
        } | ({"tunnel_nodes": live.tunnel(name.label)} if name.tunnel else {}) | (
            {} if owners is None else {"owner": owners.get(name.owner_id, "?")})

    def _cnames(self, domain: Domain) -> list[dict[str, str]]:
        if domain.state.closed:
            return []  # nothing to create: this claim no longer exists for the gateway
        return [
            {"name": domain.fqdn, "type": "CNAME", "target": f"{domain.label}.{self.zone}"},
            {
                "name": f"_acme-challenge.{domain.fqdn}",
                "type": "CNAME",
                "target": f"{domain.challenge_label}._acme.{self.zone}",
            },
        ]

    async def _domain_view(
        self, domain: Domain, owners: dict[int, str] | None = None
    ) -> dict[str, Any]:
        """One claim. Only the claim holding the domain shows its certificate; a pending
        claim says when it expires, a closed one why it closed (``detail``). ``owners``
        (the admin's views) adds whose claim it is."""
        pending = domain.state == DomainState.PENDING
        view = {
            "fqdn": domain.fqdn,
            "name": domain.label,
            "state": str(domain.state),
            "detail": domain.detail or None,
            "records": self._cnames(domain),
            "apex_alternative": {
                "A": [str(a) for a in self.config.zone.gateway_ipv4],
                "AAAA": [str(a) for a in self.config.zone.gateway_ipv6],
            },
            "certificate": self._cert_view(await self.store.get_certificate(domain.fqdn))
            if domain.state.holds
            else None,
            "created": rfc3339(domain.created),
            "expires": rfc3339(domain.created + self.config.api.domain_claim_ttl)
            if pending
            else None,
        }
        if owners is not None:
            view["owner"] = owners.get(domain.owner_id, "?")
        return view

    # ---------------------------------------------------------------- routes
    async def healthz(self, request: web.Request) -> web.Response:
        serial = await self.store.serial()
        return web.json_response({"status": "ok", "serial": serial})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, for the admin token or ``[api] metrics_token_file``'s token.

        Per-name connections and bytes tell who uses the gateway how much, so a scrape
        needs a token even from loopback: a TLS reverse proxy or an SSH tunnel in front
        of the API makes every remote request come from loopback too.
        """
        token = self._bearer(request)
        scraper = bool(self.metrics_hash) and hmac.compare_digest(hash_token(token),
                                                                  self.metrics_hash)
        if not scraper and not (await self.authenticate(self._client(request), token)).is_admin:
            raise ApiError(403, "forbidden", "/metrics needs the admin token or the token"
                               " in [api] metrics_token_file, not an owner's")
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def fleet(self, request: web.Request) -> web.Response:
        """The fleet's registry: every gateway, whether it is stale, the tunnels it holds."""
        await self._admin(request, "see the fleet")
        gateways = await self.store.list_gateways()
        tunnels = await self.store.list_tunnels()
        return web.json_response(
            fleet_json(gateways, tunnels, time.time(), self.config.fleet.stale_after))

    async def create_owner(self, request: web.Request) -> web.Response:
        await self._admin(request, "create owners")
        body = await self._body(request, {"name": str}, ("name",))
        name = body["name"].strip()
        if not 1 <= len(name) <= 64 or not name.isprintable():
            raise ApiError(422, "invalid", "an owner's name is 1 to 64 printable characters")
        token = new_token()
        await self.store.create_owner(name, hash_token(token))
        log.info("owner %r created", name)
        return web.json_response({"name": name, "token": token}, status=201)

    async def list_owners(self, request: web.Request) -> web.Response:
        await self._admin(request, "list owners")
        owners = await self.store.list_owners()
        return web.json_response(
            {
                "owners": [
                    {"name": o.name, "created": o.created, "names": o.names, "domains": o.domains}
                    for o in owners
                ]
            }
        )

    async def delete_owner(self, request: web.Request) -> web.Response:
        """Remove an owner and everything it holds; the answer lists what went with it."""
        await self._admin(request, "remove owners")
        removed = await self.store.delete_owner(request.match_info["name"])
        log.info(
            "owner %r removed with %d name(s) and %d domain(s)",
            removed.name,
            len(removed.names),
            len(removed.domains),
        )
        return web.json_response(
            {"name": removed.name, "names": list(removed.names), "domains": list(removed.domains)}
        )

    async def rotate_token(self, request: web.Request) -> web.Response:
        """A new token for the caller (or, for the admin, for ``{"owner": name}``), shown once."""
        caller = await self._caller(request)
        body = await self._body(request, {"owner": str}) if await request.read() else {}
        if caller.owner is None:
            if "owner" not in body:
                raise ApiError(
                    422,
                    "missing_field",
                    "the admin rotates an owner's token: send {\"owner\": name}; the admin"
                    " token itself is the api.admin_token_file (replace it and restart)",
                )
            name = body["owner"]
        else:
            name = body.get("owner", caller.owner.name)
            if name != caller.owner.name:
                raise ApiError(403, "forbidden", "only the admin may rotate another owner's token")
        token = new_token()
        await self.store.set_owner_token(name, hash_token(token))
        log.info("token of owner %r rotated", name)
        return web.json_response({"owner": name, "token": token})

    def _label(self, request: web.Request) -> str:
        return _checked_label(request.match_info["label"])

    async def _visible_name(self, request: web.Request) -> Name:
        caller = await self._caller(request)
        label = self._label(request)
        return _visible(caller, await self.store.get_name(label), f"name {label!r}")

    async def list_names(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        return web.json_response({"names": await self.names_view(caller)})

    async def get_name(self, request: web.Request) -> web.Response:
        return web.json_response(await self._name_view(await self._visible_name(request)))

    def _backends(self, raw: Any, tunnel: bool = False) -> tuple[HostPort, ...]:
        least = 0 if tunnel else 1
        if not isinstance(raw, list) or not least <= len(raw) <= MAX_BACKENDS:
            raise ApiError(
                422,
                "invalid_backends",
                f"'backends' is a list of {least} to {MAX_BACKENDS} 'address:port' strings"
                + ("" if tunnel else " (or set \"tunnel\": true to be served by a node)"),
            )
        out: list[HostPort] = []
        for item in raw:
            try:
                hp = parse_hostport(item)
            except ValueError as e:
                raise ApiError(422, "invalid_backends", f"backend {e}") from None
            refusal = self.backend_policy.judge(hp)
            if refusal is not None:
                raise ApiError(422, "invalid_backends", refusal.detail)
            if hp in out:
                raise ApiError(422, "invalid_backends", f"backend {hp} is listed twice")
            out.append(hp)
        return tuple(out)

    def _updated_name(
        self, label: str, owner: Owner, stored: Name | None, body: dict[str, Any]
    ) -> Name:
        """The name as the request leaves it: an update changes only the fields it sends.

        A create needs ``backends``; the other fields default. An update keeps every field
        it omits, so ``tls`` changes only when sent (switching back is ``"terminate"``).
        """
        if stored is not None and stored.owner_id != owner.id:
            raise Forbidden(f"{label!r} belongs to another owner")
        base = stored or Name(label, owner.id, ())
        tunnel = body.get("tunnel", base.tunnel)
        if stored is None and "backends" not in body and not tunnel:
            raise ApiError(
                422,
                "missing_field",
                "field 'backends' is required to create a name (an update may omit it;"
                " a \"tunnel\": true name is served by nodes that dial in instead)",
            )
        try:
            tls = TlsMode(body.get("tls", base.tls))
        except ValueError:
            raise ApiError(422, "invalid", "'tls' is 'terminate' or 'passthrough'") from None
        backends = self._backends(body["backends"], tunnel) if "backends" in body else base.backends
        if not backends and not tunnel:
            raise ApiError(422, "invalid_backends",
                           "a name that is not a tunnel name needs at least one backend")
        return dataclasses.replace(
            base,
            backends=backends,
            tls=tls,
            proxy_protocol=body.get("proxy_protocol", base.proxy_protocol),
            http2=body.get("http2", base.http2),
            tunnel=tunnel,
            tunnel_token_hash=base.tunnel_token_hash if tunnel else "",
        )

    async def put_name(self, request: web.Request) -> web.Response:
        owner = await self._owner(request)
        label = self._label(request)
        body = await self._body(
            request,
            {"backends": list, "tls": str, "proxy_protocol": bool, "http2": bool, "tunnel": bool},
        )
        view, created = await self.save_name(owner, label, body)
        return web.json_response(view, status=201 if created else 200)

    async def save_name(
        self, owner: Owner, label: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Create or update ``label`` for ``owner`` from a checked body: (view, created).

        The API's PUT and the dashboard's form both end here, so both obey the same rules.
        """
        label = _checked_label(label)
        if label in self.reserved:
            raise ApiError(422, "reserved_name", f"{label!r} is reserved; choose another name")
        name = self._updated_name(label, owner, await self.store.get_name(label), body)
        token = None
        if name.tunnel and not name.tunnel_token_hash:
            token = new_token()  # a name that just became a tunnel name gets its token
            name = dataclasses.replace(name, tunnel_token_hash=hash_token(token))
        created = await self.store.put_name(name, self.config.api.max_names_per_owner)
        stored = await self.store.get_name(label)
        assert stored is not None
        log.info("name %s %s by owner %d", label, "created" if created else "updated", owner.id)
        view = await self._name_view(stored)
        if token is not None:
            view["tunnel_token"] = token  # shown once; only its hash is stored
        return view, created

    async def rotate_tunnel_token(self, request: web.Request) -> web.Response:
        owner = await self._owner(request)
        label = self._label(request)
        token = new_token()
        await self.store.set_tunnel_token(label, owner.id, hash_token(token))
        log.info("tunnel token of %s rotated by owner %d", label, owner.id)
        return web.json_response({"name": label, "tunnel_token": token})

    async def delete_name(self, request: web.Request) -> web.Response:
        owner = await self._owner(request)
        await self.store.delete_name(self._label(request), owner.id)
        return web.Response(status=204)

    def _fqdn(self, request: web.Request, *, claim: bool = False) -> str:
        """The path's domain. A new claim must be one a public CA can certify; reading or
        releasing takes any well-formed name (a row from an older version stays reachable)."""
        raw = request.match_info["fqdn"]
        try:
            fqdn = check_custom_domain(raw, self.zone) if claim else check_domain(raw)
        except ValueError as e:
            raise ApiError(422, "invalid_domain", str(e)) from None
        if is_within(fqdn, self.zone) or is_within(self.zone, fqdn):
            raise ApiError(
                422,
                "invalid_domain",
                f"{fqdn} overlaps the gateway zone {self.zone}; use a name instead",
            )
        return fqdn

    async def list_domains(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        return web.json_response({"domains": await self.domains_view(caller)})

    async def list_certificates(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        return web.json_response({"certificates": await self.certificates_view(caller)})

    async def get_domain(self, request: web.Request) -> web.Response:
        """The caller's claim (the admin: the holding claim, else the newest)."""
        caller = await self._caller(request)
        fqdn = self._fqdn(request)
        claim = _visible(caller, await self.store.get_domain(fqdn, caller.owner_filter),
                         f"domain {fqdn!r}")
        owners = await self.store.owner_names() if caller.is_admin else None
        return web.json_response(await self._domain_view(claim, owners))

    async def put_domain(self, request: web.Request) -> web.Response:
        """Claim a domain (or move the caller's claim to another name). Each new claim gets
        its own random ``_acme-challenge`` target: the DNS, not the order of requests,
        decides which owner gets the domain."""
        owner = await self._owner(request)
        fqdn = self._fqdn(request, claim=True)
        body = await self._body(request, {"name": str}, ("name",))
        try:
            label = check_label(body["name"])
        except ValueError as e:
            raise ApiError(422, "invalid_name", str(e)) from None
        domain = Domain(fqdn, label, owner.id, new_challenge_label())
        created = await self.store.put_domain(domain, self.config.api.max_domains_per_owner)
        stored = await self.store.get_domain(fqdn, owner.id)
        assert stored is not None
        log.info("domain %s %s by owner %d", fqdn, "claimed" if created else "updated", owner.id)
        return web.json_response(
            await self._domain_view(stored), status=201 if created else 200
        )

    async def delete_domain(self, request: web.Request) -> web.Response:
        """An owner withdraws its claim (releasing the domain if it held it); the admin
        removes every claim on the domain."""
        caller = await self._caller(request)
        await self.store.delete_domain(self._fqdn(request), caller.owner_filter)
        return web.Response(status=204)
