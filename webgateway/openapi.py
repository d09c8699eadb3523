"""The API's OpenAPI 3.1 description, served at /v1/openapi.json.

Written by hand (it is small) and checked against the live routes by the API tests, so
it cannot drift from what the server does.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}

UPDATE_RULE = (
    "Creating a name needs `backends`; `tls`, `proxy_protocol` and `http2` default to"
    " terminate, false, false. An update changes only the fields it sends and keeps the"
    " others as stored (send `\"tls\": \"terminate\"` to switch a passthrough name back)."
    " A `\"tunnel\": true` name is served by nodes that dial in (`webgateway tunnel`): it may"
    " have no backends, and the answer that makes it one carries `tunnel_token`, once."
)


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": desc}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def _strings(*names: str) -> dict[str, Any]:
    """An object of string fields (what the token rotations answer)."""
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON",
        401: "Missing or invalid token",
        403: "Not allowed",
        404: "Not found (or not yours)",
        409: "Conflict",
        413: "Body too large",
        415: "Not JSON",
        422: "A field is invalid; detail says which and why",
        429: "Too many failed authentications",
        503: "The store refused the write",
    }
    return {str(c): _resp(text[c], _ERROR) for c in codes}


def _listing(key: str, schema: str) -> dict[str, Any]:
    """A list response: ``{key: [schema, ...]}``."""
    items = {"$ref": f"#/components/schemas/{schema}"}
    return {"type": "object", "properties": {key: {"type": "array", "items": items}}}


_LABEL = {
    "name": "label",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
}
_FQDN = {
    "name": "fqdn",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 253},
}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
_RW = (400, 401, 403, 413, 415, 422, 429, 503)


def _owned(
    plural: str,
    schema: str,
    param: dict[str, Any],
    summary: dict[str, str],
    put_errors: tuple[int, ...],
    put_description: str = "",
) -> dict[str, Any]:
    """The collection and item paths of one kind of owner-held resource (names, domains)."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    body = {"$ref": f"#/components/schemas/{schema}In"}
    listing = _listing(plural, schema)
    return {
        f"/v1/{plural}": {
            "get": {
                "summary": summary["list"],
                "security": _AUTH,
                "responses": {"200": _resp("OK", listing), **_errors(401, 429)},
            }
        },
        f"/v1/{plural}/{{{param['name']}}}": {
            "parameters": [param],
            "get": {
                "summary": summary["get"],
                "security": _AUTH,
                "responses": {"200": _resp("OK", ref), **_errors(401, 404, 422, 429)},
            },
            "put": {
                "summary": summary["put"],
                **({"description": put_description} if put_description else {}),
                "security": _AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                },
                "responses": {
                    "200": _resp("Updated", ref),
                    "201": _resp("Created", ref),
                    **_errors(*put_errors),
                },
            },
            "delete": {
                "summary": summary["delete"],
                "security": _AUTH,
                "responses": {"204": _resp("Deleted"), **_errors(401, 403, 404, 422, 429, 503)},
            },
        },
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "webgateway owners' API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            },
            "Certificate": {
                "type": ["object", "null"],
                "properties": {
                    "id": {"type": "string", "description": "'zone' or the custom domain"},
                    "state": {"enum": ["pending", "valid", "failed", "revoked"]},
                    "domains": {"type": "array", "items": {"type": "string"}},
                    "issuer": {"type": ["string", "null"]},
                    "not_after": {"type": ["string", "null"], "format": "date-time"},
                    "days_left": {"type": ["integer", "null"]},
                    "renew_at": {"type": ["string", "null"], "format": "date-time"},
                    "failures": {"type": "integer"},
                    "next_attempt": {"type": ["string", "null"], "format": "date-time"},
                    "last_error": {"type": ["string", "null"]},
                    "detail": {"type": "string"},
                },
            },
            "OwnerSummary": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "created": {"type": "number"},
                    "names": {"type": "integer"},
                    "domains": {"type": "integer"},
                },
            },
            "NameIn": {
                "type": "object",
                "description": UPDATE_RULE,
                "additionalProperties": False,
                "properties": {
                    "backends": {
                        "type": "array",
                        "minItems": 0,
                        "maxItems": 16,
                        "items": {"type": "string", "examples": ["[fd00::5]:8080"]},
                    },
                    "tls": {"enum": ["terminate", "passthrough"], "default": "terminate"},
                    "proxy_protocol": {"type": "boolean", "default": False},
                    "http2": {"type": "boolean", "default": False},
                    "tunnel": {"type": "boolean", "default": False},
                },
            },
            "Name": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "fqdn": {"type": "string"},
                    "backends": {"type": "array", "items": {"type": "string"}},
                    "tls": {"enum": ["terminate", "passthrough"]},
                    "proxy_protocol": {"type": "boolean"},
                    "http2": {"type": "boolean"},
                    "tunnel": {"type": "boolean"},
                    "tunnel_token": {
                        "type": "string",
                        "description": "only in the answer that made it a tunnel name: the"
                        " nodes' token, shown once",
                    },
                    "certificate": {"$ref": "#/components/schemas/Certificate"},
                    "traffic": {
                        "description": "What this gateway's proxy carries for the name:"
                        " connections open now, and over the last 60 minutes the connections"
                        " that ended and the bytes each way (in: from clients). null where"
                        " the API runs without the proxy in its process",
                        "type": ["object", "null"],
                        "properties": {
                            "connections_now": {"type": "integer"},
                            "last_hour": {
                                "type": "object",
                                "properties": {
                                    k: {"type": "integer"}
                                    for k in ("connections", "bytes_in", "bytes_out")
                                },
                            },
                        },
                    },
                    "tunnel_nodes": {
                        "description": "tunnel names only: nodes connected to this gateway"
                        " and since when the longest-connected one is (null where the API"
                        " runs without the proxy)",
                        "type": ["object", "null"],
                        "properties": {
                            "connected": {"type": "integer"},
                            "since": {"type": ["string", "null"], "format": "date-time"},
                        },
                    },
                    "owner": {"type": "string", "description": "in the admin's listing"},
                    "created": {"type": "number"},
                    "updated": {"type": "number"},
                },
            },
            "DomainIn": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string"}},
            },
            "Domain": {
                "description": (
                    "One owner's claim on a custom domain. Claims of several owners may be"
                    " pending at once, each with its own _acme-challenge target; the first"
                    " whose CNAME is seen in DNS holds the domain (verified, then active)"
                    " and the others are dropped. A pending claim expires after"
                    " [api] domain_claim_ttl. 'detail' says why a claim was dropped or expired."
                ),
                "type": "object",
                "properties": {
                    "fqdn": {"type": "string"},
                    "name": {"type": "string"},
                    "state": {"enum": ["pending", "verified", "active", "dropped", "expired"]},
                    "detail": {"type": ["string", "null"]},
                    "records": {
                        "description": "The CNAMEs to create (empty once the claim is closed)",
                        "type": "array",
                        "items": {"type": "object"},
                    },
                    "apex_alternative": {"type": "object"},
                    "certificate": {
                        "description": "Only on the claim holding the domain",
                        "oneOf": [
                            {"$ref": "#/components/schemas/Certificate"},
                            {"type": "null"},
                        ],
                    },
                    "created": {"type": ["string", "null"], "format": "date-time"},
                    "expires": {
                        "description": "When a pending claim expires (RFC 3339)",
                        "type": ["string", "null"],
                        "format": "date-time",
                    },
                    "owner": {"type": "string", "description": "whose claim (admin views)"},
                },
            },
        },
    },
    "paths": {
        "/": {
            "get": {
                "summary": "The dashboard (HTML; sign in with a token for a session cookie)",
                "responses": {"200": {"description": "page", "content": {"text/html": {}}}},
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness and the store serial", "responses": {"200": _resp("OK")}}
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format): the admin token, or the"
                " scrape-only token of [api] metrics_token_file",
                "security": _AUTH,
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {}}},
                    **_errors(401, 403, 429),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _resp("OK")}}
        },
        "/v1/owners": {
            "post": {
                "summary": "Create an owner (admin token); the token is shown once",
                "security": _AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string", "minLength": 1, "maxLength": 64}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _resp(
                        "Created",
                        {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "token": {"type": "string"}},
                        },
                    ),
                    **_errors(*_RW, 409),
                },
            },
            "get": {
                "summary": "Every owner with how many names and domains it holds (admin token)",
                "security": _AUTH,
                "responses": {
                    "200": _resp("OK", _listing("owners", "OwnerSummary")),
                    **_errors(401, 403, 429),
                },
            },
        },
        "/v1/owners/{name}": {
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                }
            ],
            "delete": {
                "summary": "Remove an owner with its names and custom domains (admin token)",
                "description": "Its token stops working, its names stop resolving and routing,"
                " and its domains' certificates are no longer wanted; the answer lists"
                " what was removed.",
                "security": _AUTH,
                "responses": {
                    "200": _resp(
                        "Removed",
                        {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "names": {"type": "array", "items": {"type": "string"}},
                                "domains": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    ),
                    **_errors(401, 403, 404, 429, 503),
                },
            },
        },
        "/v1/token/rotate": {
            "post": {
                "summary": "Replace a token; the old one stops working at once",
                "description": "An owner rotates its own token (no body). The admin rotates"
                " an owner's with `{\"owner\": name}`; the admin token itself is the"
                " `api.admin_token_file`. The new token is shown only in this answer.",
                "security": _AUTH,
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"owner": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _resp("Rotated", _strings("owner", "token")),
                    **_errors(*_RW, 404),
                },
            }
        },
        **_owned(
            "names",
            "Name",
            _LABEL,
            {
                "list": "The caller's names (all names for the admin)",
                "get": "One name",
                "put": "Reserve or update a name",
                "delete": "Release a name (and its custom domains)",
            },
            put_errors=_RW,
            put_description=UPDATE_RULE,
        ),
        "/v1/names/{label}/tunnel-token": {
            "parameters": [_LABEL],
            "post": {
                "summary": "Rotate a tunnel name's token; the new one is shown once and the"
                " old one stops working (its nodes' connections are dropped)",
                "security": _AUTH,
                "responses": {
                    "200": _resp("Rotated", _strings("name", "tunnel_token")),
                    **_errors(401, 403, 404, 409, 422, 429, 503),
                },
            },
        },
        **_owned(
            "domains",
            "Domain",
            _FQDN,
            {
                "list": "The caller's domain claims (every claim for the admin)",
                "get": "The caller's claim: verification, certificate, or why it closed",
                "put": "Claim a custom domain for a name; returns the CNAMEs to create"
                " (409 if another owner holds it)",
                "delete": "Withdraw the caller's claim; a held domain is released and its"
                " certificate revoked (admin: every claim on the domain)",
            },
            put_errors=(*_RW, 404, 409),
        ),
        "/v1/certificates": {
            "get": {
                "summary": "Certificates with expiry (admin: all; owner: the zone's and its"
                " domains')",
                "security": _AUTH,
                "responses": {
                    "200": _resp("OK", _listing("certificates", "Certificate")),
                    **_errors(401, 429),
                },
            }
        },
        "/v1/fleet": {
            "get": {
                "summary": "The fleet's gateways (registry, heartbeat age, stale or not) and"
                " the tunnel names each holds a live tunnel for (admin token)",
                "security": _AUTH,
                "responses": {
                    "200": _resp("OK", {"type": "object", "properties": {
                        "gateways": {"type": "array", "items": {"type": "object"}}}}),
                    **_errors(401, 403, 429),
                },
            }
        },
    },
}
