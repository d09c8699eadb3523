"""The web dashboard at ``/``: server-rendered pages over the API's own views.

An owner signs in with its API token and sees what the CLI shows: its names, custom
domains (with the CNAMEs still to create) and certificates; the admin sees everyone's.
The pages are Jinja2 templates with autoescaping on; there is no script at all, so the
Content-Security-Policy can forbid every script and inline style.

Security, in short: the token is posted once and exchanged for a random session id in an
HttpOnly, SameSite=Strict cookie (Secure over HTTPS) -- see ``webgateway.sessions`` for
why the sessions live in a server-side table. Every form carries a per-session CSRF value
(the sign-in form a per-visit one, against login CSRF); sign-in failures count in the API's
failed-authentication limiter; every page sends a strict CSP, nosniff, no-referrer and
no-store.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from webgateway.api import Api, ApiError, Caller
from webgateway.sessions import Session, SessionTable, same_secret
from webgateway.store import StoreError
from webgateway.tokens import hash_token
from webgateway.when import date_of, minute_of

SESSION_COOKIE = "wg_session"
LOGIN_COOKIE = "wg_login"  # per-visit CSRF value of the sign-in form
STATIC = Path(__file__).with_name("static")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_BACKEND_SPLIT = re.compile(r"[\s,]+")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("webgateway", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["date"] = date_of
    env.filters["minute"] = minute_of
    env.filters["size"] = size_of
    return env


def size_of(n: int) -> str:
    """Bytes as people read them: ``950 B``, ``12.3 kB``, ``4.1 MB`` (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 999.95:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


class Dashboard:
    def __init__(self, api: Api, sessions: SessionTable | None = None) -> None:
        self.api = api
        self.sessions = sessions or SessionTable()
        self.templates = _environment()

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_post("/names", self.add_name)
        app.router.add_get("/static/dashboard.css", self.stylesheet)

    # ---------------------------------------------------------------- plumbing
    def _page(self, template: str, status: int = 200, **values: Any) -> web.Response:
        html = self.templates.get_template(template).render(zone=self.api.zone, **values)
        return web.Response(
            text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS
        )

    @staticmethod
    def _redirect_home() -> web.Response:
        return web.Response(status=303, headers={"Location": "/", **SECURITY_HEADERS})

    @staticmethod
    def _set_cookie(
        request: web.Request, resp: web.StreamResponse, name: str, value: str, max_age: int
    ) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    async def _session(self, request: web.Request) -> tuple[Session, Caller] | None:
        """The signed-in session and who it is now; a token rotated or removed since
        sign-in ends the session."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        caller = await self.api.caller_by_token_hash(session.token_hash)
        if caller is None:
            self.sessions.close(session.id)
            return None
        return session, caller

    def _login_page(self, request: web.Request, status: int = 200, error: str = "") -> web.Response:
        nonce = secrets.token_urlsafe(32)
        resp = self._page("login.html", status, csrf=nonce, error=error)
        self._set_cookie(request, resp, LOGIN_COOKIE, nonce, 3600)
        return resp

    # ---------------------------------------------------------------- pages
    async def index(self, request: web.Request) -> web.Response:
        found = await self._session(request)
        if found is None:
            return self._login_page(request)
        session, caller = found
        flash, session.flash = session.flash, []
        return self._page(
            "dashboard.html",
            who="admin" if caller.owner is None else caller.owner.name,
            is_admin=caller.is_admin,
            csrf=session.csrf,
            flash=flash,
            names=await self.api.names_view(caller),
            domains=await self.api.domains_view(caller),
            certificates=await self.api.certificates_view(caller),
            now=time.time(),
        )

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(
            body=(STATIC / "dashboard.css").read_bytes(),
            content_type="text/css",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"},
        )

    # ---------------------------------------------------------------- forms
    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not same_secret(form.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")):
            return self._login_page(request, 403, "the sign-in form expired; please sign in again")
        token = form.get("token")
        if not isinstance(token, str) or not token.strip():
            return self._login_page(request, 400, "enter your API token")
        try:
            await self.api.authenticate(self.api._client(request), token.strip())
        except ApiError as e:
            return self._login_page(request, e.status, e.detail)
        session = self.sessions.open(hash_token(token.strip()))
        resp = self._redirect_home()
        self._set_cookie(request, resp, SESSION_COOKIE, session.id, int(self.sessions.ttl))
        resp.del_cookie(LOGIN_COOKIE, path="/")
        return resp

    async def _checked_form(
        self, request: web.Request
    ) -> tuple[Session, Caller, Any] | web.Response:
        """The session, caller and form of a signed-in POST whose CSRF value matches."""
        found = await self._session(request)
        if found is None:
            return self._login_page(request, 401, "please sign in")
        session, caller = found
        form = await request.post()
        if not same_secret(form.get("csrf"), session.csrf):
            return self._page(
                "refused.html", 403, detail="the form's CSRF token is missing or wrong"
            )
        return session, caller, form

    async def logout(self, request: web.Request) -> web.Response:
        checked = await self._checked_form(request)
        if isinstance(checked, web.Response):
            return checked
        session, _, _ = checked
        self.sessions.close(session.id)
        resp = self._redirect_home()
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    async def add_name(self, request: web.Request) -> web.Response:
        checked = await self._checked_form(request)
        if isinstance(checked, web.Response):
            return checked
        session, caller, form = checked
        label = str(form.get("label", "")).strip().lower()
        backends = [b for b in _BACKEND_SPLIT.split(str(form.get("backends", ""))) if b]
        tls = str(form.get("tls", "terminate"))
        if caller.owner is None:
            session.flash.append(("error", "names belong to owners: sign in with an owner's token"))
            return self._redirect_home()
        try:
            view, created = await self.api.save_name(
                caller.owner, label, {"backends": backends, "tls": tls}
            )
        except ApiError as e:
            session.flash.append(("error", e.detail))
        except StoreError as e:
            session.flash.append(("error", str(e)))
        else:
            verb = "added" if created else "updated"
            session.flash.append(("ok", f"{view['fqdn']} {verb}"))
        return self._redirect_home()
