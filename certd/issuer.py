"""The ACME side of certd: the account and the order driver, over a private thread pool.

The ``acme`` library is synchronous, so every request runs in our own
``ThreadPoolExecutor`` (``acme.concurrency`` threads) with one ``ClientNetwork`` per
thread -- nonces and HTTP sessions are never shared between threads. Waiting (DNS
propagation, polling delays) happens on the event loop, not in a thread, so many more
orders can be in flight than there are threads, and DNS keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from acme import challenges, client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from certd import acmenet, certkeys
from certd.acmenet import RetryingNetwork, RetryLater
from certd.dnscheck import wait_propagated
from certd.orderflow import AuthzView, Step, dead_reason, next_step
from certd.schedule import poll_delay
from certd.workers import PriorityPool
from webgateway.config import AcmeConfig, Config
from webgateway.keyseal import KeySeal
from webgateway.model import acme_account_meta_key
from webgateway.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
#: ``Issuer._call`` with an order's priority bound: runs one ACME step in the pool.
_Call = Callable[..., Awaitable[Any]]
USER_AGENT = "webgateway-certd"
#: Where builds before the store kept keys held the account key (imported once, kept).
ACCOUNT_KEY_FILE = "acme-account.key"
#: The account key's name in the store's secrets (and its keyseal slot): one key for every
#: directory and every gateway, so any gateway can resume an order of the account.
ACCOUNT_KEY_ROW = "acme-account"
#: An order that has not produced a certificate after this long (past DNS propagation)
#: is given up; the next attempt resumes it or starts over.
ORDER_TIMEOUT = 120.0


class OrderDead(Exception):
    """The CA invalidated the order (a validation failed): start a new one next time."""


class AccountGone(Exception):
    """The CA no longer knows our account (a Pebble restart, a deactivation)."""


@dataclass(frozen=True)
class Issued:
    fullchain: bytes
    key: ec.EllipticCurvePrivateKey


class Issuer:
    def __init__(self, config: Config, store: Store) -> None:
        assert config.acme is not None
        self.config = config
        self.acme: AcmeConfig = config.acme
        self.store = store
        self.certs_dir = config.store.certs_dir
        self.seal = KeySeal(config.store.key)
        self.pool = PriorityPool(self.acme.concurrency, "certd-acme")
        self._local = threading.local()
        self._gen = 0
        self._account_lock = asyncio.Lock()
        self.jwk: JWKEC | None = None
        self.directory: messages.Directory | None = None
        self.regr: messages.RegistrationResource | None = None
        self.verify: bool | str = str(self.acme.ca_bundle) if self.acme.ca_bundle else True
        self.bad_nonces = 0  # badNonce replies retried (a metric; the CA injects them too)
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown()

    # ------------------------------------------------------------ threads
    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None or self._local.gen != self._gen:
            net = RetryingNetwork(
                self.jwk, account=self.regr, alg=ES256, verify_ssl=self.verify,
                user_agent=USER_AGENT, timeout=20, ca_url=self.acme.directory,
            )
            assert self.directory is not None
            c = client.ClientV2(self.directory, net)
            self._local.client, self._local.gen = c, self._gen
        return c

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        c = self._client()
        before = c.net.bad_nonces
        try:
            return fn(c, *args)
        except messages.Error as e:
            if e.code == "accountDoesNotExist":
                raise AccountGone(str(e)) from e
            raise
        finally:
            with self._count_lock:
                self.bad_nonces += c.net.bad_nonces - before

    async def _call(self, fn: Callable[..., T], *args: Any, priority: float = 0.0) -> T:
        """Run one ACME step in the pool; orders pass their start time as ``priority``."""
        fut = self.pool.submit(priority, functools.partial(self._in_thread, fn, *args))
        result: T = await asyncio.wrap_future(fut)
        return result

    # ------------------------------------------------------------ account
    async def ensure_account(self) -> None:
        async with self._account_lock:
            if self.regr is not None:
                return
            key = self.acme.directory
            stored = await self.store.get_meta(acme_account_meta_key(key))
            account_key = await self._account_key()
            jwk, directory, regr = await asyncio.wrap_future(
                self.pool.submit(-1.0, functools.partial(self._account_sync, stored or None,
                                                         account_key))
            )
            if regr.uri != stored:
                await self.store.set_meta(acme_account_meta_key(key), regr.uri)
                log.info("ACME account registered at %s", regr.uri)
            else:
                log.info("ACME account %s reused", regr.uri)
            self.jwk, self.directory, self.regr = jwk, directory, regr
            self._gen += 1

    async def forget_account(self) -> None:
        async with self._account_lock:
            self.regr = None
            await self.store.set_meta(acme_account_meta_key(self.acme.directory), "")

    async def _account_key(self) -> ec.EllipticCurvePrivateKey:
        """The fleet's account key from the store: created by the first gateway that needs
        one (or imported from the file an earlier build kept), the same for all after."""
        stored = await self.store.get_secret(ACCOUNT_KEY_ROW)
        if stored is None:
            legacy = self.certs_dir / ACCOUNT_KEY_FILE
            pem = await asyncio.to_thread(certkeys.read_key_pem, legacy)
            if pem is not None:
                log.info("ACME account key imported into the store from %s", legacy)
            else:
                pem = certkeys.key_pem(certkeys.new_key())
            stored = await self.store.put_secret_once(
                ACCOUNT_KEY_ROW, self.seal.seal(ACCOUNT_KEY_ROW, pem))
        return certkeys.load_key(self.seal.open(ACCOUNT_KEY_ROW, stored))

    def _account_sync(
        self, stored_url: str | None, key: ec.EllipticCurvePrivateKey
    ) -> tuple[JWKEC, messages.Directory, messages.RegistrationResource]:
        jwk = JWKEC(key=key)
        net = RetryingNetwork(jwk, alg=ES256, verify_ssl=self.verify,
                              user_agent=USER_AGENT, timeout=20, ca_url=self.acme.directory)
        directory = messages.Directory.from_json(net.get(self.acme.directory).json())
        if stored_url:
            regr = messages.RegistrationResource(uri=stored_url, body=messages.Registration())
            return jwk, directory, regr
        c = client.ClientV2(directory, net)
        eab = None
        if self.acme.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=jwk.public_key(), kid=self.acme.eab_kid,
                hmac_key=self.acme.eab_hmac_key, directory=directory,
            )
        reg = messages.NewRegistration.from_data(
            email=self.acme.email or None, terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            regr = c.new_account(reg)
        except errors.ConflictError as e:  # the key has an account already
            regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        finally:
            with self._count_lock:
                self.bad_nonces += net.bad_nonces
        return jwk, directory, regr

    # ------------------------------------------------------------ ACME steps (threads)
    @staticmethod
    def _fetch(c: Any, url: str, csr: bytes, with_authz: bool,
               old: Any = None) -> Any:
        body = messages.Order.from_json(acmenet.post_as_get(c, url).json())
        if with_authz:
            authzs = [acmenet.fetch_authorization(c, u) for u in body.authorizations]
        else:
            authzs = old.authorizations if old is not None else []
        return messages.OrderResource(body=body, uri=url, authorizations=authzs, csr_pem=csr)

    @staticmethod
    def _new_order(c: Any, csr: bytes) -> Any:
        return c.new_order(csr)

    def _answer(self, c: Any, challbs: list[Any]) -> None:
        for ch in challbs:
            c.answer_challenge(ch, ch.chall.response(self.jwk))

    @staticmethod
    def _finalize(c: Any, order: Any) -> Any:
        try:
            return c.begin_finalization(order)
        except messages.Error as e:
            if e.code != "orderNotReady":
                raise
            return order

    @staticmethod
    def _download(c: Any, url: str) -> str:
        return str(acmenet.post_as_get(c, url).text)

    @staticmethod
    def _revoke(c: Any, pem: bytes) -> None:
        leaf = x509.load_pem_x509_certificates(pem)[0]
        c.revoke(leaf, 5)  # cessationOfOperation

    # ------------------------------------------------------------ the order driver
    @staticmethod
    def _dns01(authz: Any) -> Any:
        for ch in authz.body.challenges:
            if isinstance(ch.chall, challenges.DNS01):
                return ch
        return None

    def _views(self, order: Any, answered: set[str]) -> list[AuthzView]:
        out = []
        for a in order.authorizations:
            ch = self._dns01(a)
            cstat = "missing" if ch is None else str(ch.status.name)
            if a.uri in answered and cstat == "pending":
                cstat = "processing"
            err = ""
            if ch is not None and ch.error is not None:
                err = str(ch.error.detail or ch.error.code or "")
            out.append(AuthzView(a.body.identifier.value, bool(a.body.wildcard),
                                 str(a.body.status.name), cstat, err))
        return out

    async def obtain(
        self,
        cert_id: str,
        domains: tuple[str, ...],
        txt_name: Callable[[str], str],
        resume_url: str,
        key: ec.EllipticCurvePrivateKey,
        on_order: Callable[[str], Awaitable[None]],
        published: dict[str, set[str]],
    ) -> Issued:
        """Drive one order to a certificate. ``published`` collects the TXT we wrote;
        ``key`` is the one the caller stored beside the order (``on_order`` stores a new
        order's URL), so whichever gateway resumes the order finalizes it with that key.

        Each round asks ``orderflow.next_step`` what the CA's last word calls for and does
        that one thing; a resumed order and a fresh one go through the same loop.
        """
        await self.ensure_account()
        call: _Call = functools.partial(self._call, priority=time.monotonic())
        csr = certkeys.csr_pem(key, domains)
        order = await self._resume_or_new(call, cert_id, domains, csr, resume_url, on_order)
        answered: set[str] = set()
        end = time.monotonic() + ORDER_TIMEOUT + self.acme.propagation_timeout
        rounds = 0
        while True:
            views = self._views(order, answered)
            match next_step(str(order.body.status.name), views,
                            order.body.certificate is not None):
                case Step.DOWNLOAD:
                    pem = await call(self._download, order.body.certificate)
                    return Issued(pem.encode(), key)
                case Step.DEAD:
                    raise OrderDead(await self._dead_reason(call, order, csr))
                case Step.SOLVE:
                    answered |= await self._solve(call, order, answered, txt_name, published)
                    rounds = 0
                case Step.FINALIZE:
                    order = await call(self._finalize, order)
                    rounds = 0
                    if order.body.status == messages.STATUS_READY:
                        await asyncio.sleep(poll_delay(rounds))
                    continue
                case _:  # WAIT_AUTHZ / WAIT_ORDER
                    if time.monotonic() > end:
                        raise TimeoutError(f"order {order.uri} still {order.body.status} after "
                                           f"{ORDER_TIMEOUT:.0f} s")
                    await asyncio.sleep(poll_delay(rounds))
                    rounds += 1
            order = await call(self._fetch, order.uri, csr, False, order)

    async def _resume_or_new(
        self,
        call: _Call,
        cert_id: str,
        domains: tuple[str, ...],
        csr: bytes,
        resume_url: str,
        on_order: Callable[[str], Awaitable[None]],
    ) -> Any:
        """The order at ``resume_url`` when it is alive and for these names; else a new
        one, whose URL ``on_order`` stores before any work is done on it."""
        if resume_url:
            order = await self._resumable(call, cert_id, domains, csr, resume_url)
            if order is not None:
                return order
        taken = await self._count_new_order(cert_id)
        try:
            order = await call(self._new_order, csr)
        except Exception as e:
            # The CA refused or was not reached: no order to count. A read timeout may
            # have created one, so it stays counted (as does a cancelled call).
            if not isinstance(e, requests.exceptions.ReadTimeout):
                await self.store.give_back_order_slot(self.acme.directory, cert_id, taken)
            raise
        await on_order(order.uri)
        return order

    async def _count_new_order(self, cert_id: str) -> float:
        """Take one new order from the account's budget, counted by the whole fleet in the
        store (Let's Encrypt: 300 new orders per account per 3 hours); RetryLater if spent.
        Returns when it was taken (what ``give_back_order_slot`` needs)."""
        a = self.acme
        now = time.time()
        free_at = await self.store.take_order_slot(a.directory, cert_id, now, a.order_window,
                                                   a.max_orders)
        if free_at:
            raise RetryLater(free_at - now, f"the fleet created {a.max_orders} new orders of"
                             f" this account in the last {a.order_window:.0f} s ([acme]"
                             f" max_orders); the next may start in {free_at - now:.0f} s")
        return now

    async def _resumable(
        self, call: _Call, cert_id: str, domains: tuple[str, ...], csr: bytes, url: str
    ) -> Any:
        """The order at ``url`` with its authorizations, or None when it cannot be used."""
        try:
            order = await call(self._fetch, url, csr, True)
        except (messages.Error, errors.ClientError) as e:
            log.info("certificate %s: order %s cannot be resumed (%s); starting over",
                     cert_id, url, e)
            return None
        idents = sorted({i.value for i in order.body.identifiers})
        if idents != sorted(set(domains)) or next_step(
            str(order.body.status.name), self._views(order, set()), False
        ) is Step.DEAD:
            log.info("certificate %s: order %s is %s or for other names; starting over",
                     cert_id, url, order.body.status.name)
            return None
        log.info("certificate %s: resuming order %s (%s)", cert_id, url,
                 order.body.status.name)
        return order

    async def _solve(
        self,
        call: _Call,
        order: Any,
        answered: set[str],
        txt_name: Callable[[str], str],
        published: dict[str, set[str]],
    ) -> set[str]:
        """Publish the TXT of every pending dns-01 challenge not yet answered, wait until
        all our servers serve them, answer them; return the authorization URLs answered."""
        todo = []
        recs: dict[str, set[str]] = {}
        for a in order.authorizations:
            ch = self._dns01(a)
            if a.body.status == messages.STATUS_PENDING and ch is not None and (
                ch.status == messages.STATUS_PENDING and a.uri not in answered
            ):
                todo.append((a, ch))
                recs.setdefault(txt_name(a.body.identifier.value), set()).add(
                    ch.chall.validation(self.jwk))
        if not todo:
            raise OrderDead("a pending authorization offers no dns-01 challenge")
        for fqdn, values in recs.items():
            for v in values:
                await self.store.add_txt(fqdn, v)
                published.setdefault(fqdn, set()).add(v)
        await wait_propagated(self.config, recs, self.acme.propagation_timeout)
        await call(self._answer, [ch for _, ch in todo])
        return {a.uri for a, _ in todo}

    async def _dead_reason(self, call: _Call, order: Any, csr: bytes) -> str:
        """Why the order died, from its authorizations fetched afresh (they say which name
        failed validation and how)."""
        detailed = await call(self._fetch, order.uri, csr, True)
        err = str(order.body.error.detail) if order.body.error is not None else ""
        return dead_reason(str(order.body.status.name), self._views(detailed, set()), err)

    def has_ari(self) -> bool:
        if self.directory is None:
            return False
        try:
            self.directory["renewalInfo"]
        except KeyError:
            return False
        return True

    def _renewal_info(self, c: Any, pem: bytes) -> tuple[Any, str | None]:
        leaf = x509.load_pem_x509_certificates(pem)[0]
        base = self.directory["renewalInfo"] if self.directory is not None else ""
        url = f"{str(base).rstrip('/')}/{acmenet.ari_cert_id(leaf)}"
        resp = c.net.get(url, content_type="application/json")
        return resp.json(), resp.headers.get("Retry-After")

    async def renewal_info(self, pem: bytes) -> tuple[Any, str | None] | None:
        """The CA's renewalInfo for a certificate (ARI), or None when it offers none."""
        await self.ensure_account()
        if not self.has_ari():
            return None
        return await self._call(self._renewal_info, pem)

    async def revoke(self, fullchain: bytes) -> None:
        await self.ensure_account()
        await self._call(self._revoke, fullchain)
