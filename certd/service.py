"""certd: turn "the zone exists" and "a custom domain points at us" into certificates.

One scheduler loop on the event loop: it follows the store (``Follower``), works out
which certificates are wanted (the zone wildcard, plus one per verified custom domain),
asks ``schedule.due_at`` when each needs an order, and runs orders as tasks; the ACME
requests themselves run in the ``Issuer``'s thread pool. Nothing here blocks start-up:
a CA that cannot be reached is a failed attempt with backoff, visible in the API.

certd is also the judge of custom-domain claims: it looks for each pending claim's proof
in DNS through ``[acme] resolver`` (the store then drops the domain's other claims), and
expires claims not proven within ``[api] domain_claim_ttl`` -- the expiry also without
``[acme]``, where nothing is verified (no resolver is configured, no certificate could
follow). Both verdicts sit in the one loop that already watches the claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from certd import certkeys
from certd.dnscheck import judge_domain, lookup_domain
from certd.failure import MAX_MESSAGE, classify
from certd.issuer import Issued, Issuer, OrderDead
from certd.schedule import (
    apply_ari,
    backoff,
    due_at,
    parse_renewal_info,
    renew_at,
)
from webgateway.config import Config
from webgateway.dnsname import is_within
from webgateway.feed import Follower
from webgateway.keyseal import KeySeal, KeySealError, slot
from webgateway.model import (
    Certificate,
    CertState,
    ChangeSet,
    Domain,
    DomainState,
    NameLoad,
    Snapshot,
    merge,
)
from webgateway.store import Store, StoreError

log = logging.getLogger(__name__)

ZONE_CERT = "zone"
#: Longest sleep of the scheduler with nothing due (a change wakes it at once).
MAX_IDLE = 30.0
#: Re-check a custom domain's CNAMEs after 0.1 s, doubling up to 5 minutes (the first
#: check can race our own dnsd picking the domain up).
VERIFY_FIRST, VERIFY_CAP = 0.1, 300.0
#: Orders in flight per ACME thread (the rest wait before creating their order).
ORDERS_PER_THREAD = 64
#: A certificate's lease (one gateway of the fleet orders it) lasts this long unless its
#: holder renews it every LEASE_BEAT: a gateway killed mid-order is taken over within
#: LEASE_TTL (a fleet's store judges expiry by the database's clock, so gateways' clocks
#: may disagree).
LEASE_TTL, LEASE_BEAT = 20.0, 5.0
#: How often pending claims past their TTL are expired (and old closed ones purged).
CLAIM_SWEEP = 60.0


class CertView:
    """What certd follows: held domains (by fqdn), pending claims (by challenge label) and
    certificates; names are not its concern."""

    def __init__(self) -> None:
        self.domains: dict[str, Domain] = {}
        self.claims: dict[str, Domain] = {}
        self.certs: dict[str, Certificate] = {}
        self.txt: dict[str, tuple[str, ...]] = {}

    def load(self, snapshot: Snapshot) -> None:
        self.domains = dict(snapshot.domains)
        self.claims = dict(snapshot.claims)
        self.certs = dict(snapshot.certificates)
        self.txt = dict(snapshot.txt)

    def apply(self, changes: ChangeSet) -> None:
        merge(self.domains, changes.domains)
        merge(self.claims, changes.claims)
        merge(self.certs, changes.certificates)
        for fqdn, values in changes.txt.items():
            if values:
                self.txt[fqdn] = values
            else:
                self.txt.pop(fqdn, None)


#: Seconds an order may take, from a cached authorization to a slow CA and DNS propagation.
ORDER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Metrics(Collector):
    """What certd's state says at scrape time; counters of orders are kept as they end."""

    def __init__(self, svc: CertService, registry: CollectorRegistry) -> None:
        self.svc = svc
        self.orders = Counter("webgateway_acme_orders", "ACME order attempts by outcome"
                              " (issued, or why it failed)", ["outcome"], registry=registry)
        self.duration = Histogram("webgateway_acme_order_duration_seconds",
                                  "Time from starting an order attempt to its end, by result",
                                  ["result"], buckets=ORDER_BUCKETS, registry=registry)
        registry.register(self)

    def ended(self, outcome: str, seconds: float) -> None:
        self.orders.labels(outcome).inc()
        self.duration.labels("issued" if outcome == "issued" else "failed").observe(seconds)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.svc
        yield CounterMetricFamily("webgateway_acme_bad_nonce_retries",
                                  "badNonce replies retried",
                                  value=s.issuer.bad_nonces if s.issuer else 0)
        yield GaugeMetricFamily("webgateway_acme_orders_in_flight", "Orders running",
                                value=len(s.running))
        expiry = GaugeMetricFamily(
            "webgateway_certificate_expiry_seconds", "Seconds until the certificate in place"
            " expires (negative: expired), by certificate id (zone, or the custom domain)",
            labels=["certificate"])
        now = time.time()
        for cid, cert in sorted(s.view.certs.items()):
            if cert.not_after:
                expiry.add_metric([cid], cert.not_after - now)
        yield expiry


def gateway_id(config: Config) -> str:
    """This gateway, the same across its restarts: host and configuration file."""
    return f"{socket.gethostname()}:{config.source or config.store.certs_dir}"


def lease_name(cert_id: str) -> str:
    return f"cert:{cert_id}"


class LeaseLost(Exception):
    """Another gateway holds the certificate's lease now: it resumes the order."""


class CertService:
    name = "certd"

    def __init__(self, config: Config, store: Store, registry: CollectorRegistry) -> None:
        self.config = config
        self.store = store
        self.zone = config.zone.name
        self.view = CertView()
        self.follower = Follower(store, self.view, max_wait=1.0, names_as=NameLoad.NONE)
        self.issuer: Issuer | None = Issuer(config, store) if config.acme is not None else None
        self.running: dict[str, asyncio.Task[None]] = {}
        self.verifying: dict[str, asyncio.Task[None]] = {}  # by claim (challenge label)
        self.verify_next: dict[str, tuple[float, int]] = {}  # claim -> (when, attempts)
        self.sweep_at = 0.0
        self.challenge_names: dict[str, str] = {}  # cert id -> its TXT name, kept for retiring
        self.cleaning: set[str] = set()
        # A bound on orders in flight (each holds TXT records and an open CA order); the
        # pool serves older orders first, so the bound is not what keeps latency low.
        slots = ORDERS_PER_THREAD * (config.acme.concurrency if config.acme else 1)
        self.order_slots = asyncio.Semaphore(slots)
        self.ari_next: dict[str, float] = {}  # cert id -> when to ask renewalInfo again
        self.ari_running: set[str] = set()
        self.rng = random.Random()
        self.seal = KeySeal(config.store.key)
        #: who holds a lease: this gateway (a restart frees its old leases at once) and
        #: this process
        self.gateway = gateway_id(config)
        self.holder = f"{self.gateway}#{os.getpid()}.{secrets.token_hex(3)}"
        self.lease_wait: dict[str, float] = {}  # cert id -> when another gateway's lease ends
        self.lost: set[str] = set()  # cert ids whose lease went to another gateway mid-job
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.metrics = _Metrics(self, registry)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.issuer is None:
            log.info("certd: no [acme] section: no certificates, and custom-domain claims"
                     " are not verified (they expire after [api] domain_claim_ttl)")
        self._main = asyncio.create_task(self._run(), name="certd")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._main = None
        if self.issuer is not None:
            self.issuer.close()

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._wake.set()

        task.add_done_callback(done)
        return task

    async def _run(self) -> None:
        while True:
            try:
                await self.follower.load()
                break
            except StoreError as e:
                log.warning("certd: cannot read the store (%s); retrying", e)
                await asyncio.sleep(1.0)
        self._spawn(self.follower.run(), "certd-follower")
        if self.issuer is not None:
            while True:
                try:
                    await self._startup_cleanup()
                    break
                except StoreError as e:
                    log.warning("certd: cannot clean up at start (%s); retrying", e)
                    await asyncio.sleep(1.0)
        while True:
            try:
                wait = await self._tick(time.time())
            except StoreError as e:
                log.warning("certd: store write failed (%s); retrying", e)
                wait = 1.0
            self._wake.clear()
            applied = self.follower.applied
            waiters = [asyncio.ensure_future(applied.wait()),
                       asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=max(wait, 0.01),
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    # ------------------------------------------------------------ what we want
    def txt_name(self, cert_id: str) -> str:
        """Where the TXT of ``cert_id``'s challenges go: under the label of the claim holding
        the domain (remembered, so a released domain's TXT is still found); "" if unknown."""
        if cert_id == ZONE_CERT:
            return f"_acme-challenge.{self.zone}"
        dom = self.view.domains.get(cert_id)
        if dom is not None:
            name = f"{dom.challenge_label}._acme.{self.zone}"
            self.challenge_names[cert_id] = name
            return name
        return self.challenge_names.get(cert_id, "")

    def wanted(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {ZONE_CERT: (self.zone, f"*.{self.zone}")}
        for fqdn, d in self.view.domains.items():
            if d.state in (DomainState.VERIFIED, DomainState.ACTIVE):
                out[fqdn] = (fqdn,)
        return out

    async def _startup_cleanup(self) -> None:
        """Leases an earlier process of this gateway held are freed (it is gone: one certd
        runs per gateway), and TXT of orders that died with it are removed: the values
        seen at start under names of ours no certificate's order is using (resumed orders
        re-add theirs; a value another gateway publishes later is not touched)."""
        freed = await self.store.release_leases(self.gateway + "#")
        if freed:
            log.info("certd: freed %d leases of this gateway's previous process", freed)
        for cid, files in (await self.store.legacy_certificate_files()).items():
            await self._import_files(cid, *files)
        ours = {
            self.txt_name(cid) for cid, c in self.view.certs.items() if c.order_url
        }
        for fqdn, values in list(self.view.txt.items()):
            mine = fqdn == f"_acme-challenge.{self.zone}" or is_within(fqdn, f"_acme.{self.zone}")
            if mine and fqdn not in ours:
                log.info("certd: removing TXT left over at %s", fqdn)
                for value in values:
                    await self.store.remove_txt(fqdn, value)

    async def _import_files(self, cid: str, chain_path: str, key_path: str) -> None:
        """A certificate an earlier build kept in files goes into the store (no re-issue,
        no gap in serving); files that are gone or do not match leave it to a new order."""
        cert = self.view.certs.get(cid)

        def read() -> tuple[bytes, bytes]:
            with open(chain_path, "rb") as c, open(key_path, "rb") as k:
                return c.read(), k.read()

        try:
            chain, pem = await asyncio.to_thread(read)
            text = chain.decode("ascii")
            if cert is None or not certkeys.leaf_matches_key(chain, certkeys.load_key(pem)):
                raise ValueError("the key does not match the chain")
        except (OSError, ValueError) as e:
            log.info("certd: %s not imported from %s (%s): it is ordered anew", cid,
                     chain_path, getattr(e, "strerror", None) or e)
            return
        done = await self.store.import_certificate(
            cid, text, self.seal.seal(slot("cert", cid), pem), chain_path)
        row = await self.store.get_certificate(cid)  # before the feed: the scheduler reads it
        if row is not None:
            self.view.certs[cid] = row
        if not done:
            log.info("certd: %s not imported from %s: the store has a chain for it already",
                     cid, chain_path)
            return
        log.info("certd: certificate %s imported into the store from %s", cid, chain_path)

    async def _tick(self, now: float) -> float:
        """Start what is due; return seconds until the next thing is."""
        nxt = min(now + MAX_IDLE, await self._judge_claims(now))
        if self.issuer is None:
            return nxt - now
        wanted = self.wanted()
        for cid, until in list(self.lease_wait.items()):
            if until <= now:
                del self.lease_wait[cid]
            else:
                nxt = min(nxt, until)
        for cid in list(self.view.certs):
            if cid not in wanted and cid not in self.cleaning and cid not in self.lease_wait:
                task = self.running.pop(cid, None)
                if task is not None:
                    task.cancel()
                self.cleaning.add(cid)
                self._spawn(self._retire(cid), f"certd-retire-{cid}")
        for cid, domains in wanted.items():
            if cid in self.running or cid in self.cleaning or cid in self.lease_wait:
                continue
            cert = self.view.certs.get(cid)
            at = due_at(cert, domains, cert is not None and cert.in_place)
            if (cert is not None and cert.state == CertState.VALID and at > now
                    and cid not in self.ari_running and self.ari_next.get(cid, 0.0) <= now
                    and self.issuer is not None and self.issuer.regr is not None):
                self.ari_running.add(cid)
                self._spawn(self._ari_check(cert), f"certd-ari-{cid}")
            elif cid in self.ari_next:
                nxt = min(nxt, self.ari_next[cid])
            if at <= now:
                self.running[cid] = self._spawn(self._attempt(cid, domains), f"certd-order-{cid}")
            else:
                nxt = min(nxt, at)
        return nxt - now

    # ------------------------------------------------------------ leases
    async def _take_lease(self, cid: str) -> bool:
        """Hold ``cid``'s lease (True), or note when another gateway's runs out (False)."""
        lease = await self.store.take_lease(lease_name(cid), self.holder, LEASE_TTL,
                                            time.time())
        if lease.holder == self.holder:
            self.lease_wait.pop(cid, None)
            return True
        if cid not in self.lease_wait:
            log.info("certd: %s is being ordered by %s; taking over if its lease lapses",
                     cid, lease.holder)
        self.lease_wait[cid] = lease.expires + self.rng.uniform(0.0, 0.5)
        return False

    async def _heartbeat(self, cid: str, work: asyncio.Task[None]) -> None:
        """Renew ``cid``'s lease while ``work`` runs; cancel it once the lease is another
        gateway's, or cannot be renewed before it runs out (that gateway resumes)."""
        expires = time.time() + LEASE_TTL
        while True:
            await asyncio.sleep(LEASE_BEAT)
            try:
                lease = await self.store.take_lease(lease_name(cid), self.holder, LEASE_TTL,
                                                    time.time())
            except StoreError as e:
                if time.time() + LEASE_BEAT < expires:
                    continue
                why = f"cannot renew it: {e}"
            else:
                if lease.holder == self.holder:
                    expires = lease.expires
                    continue
                why = f"{lease.holder} holds it"
            log.warning("certd: lost the lease of %s (%s); leaving its order", cid, why)
            self.lost.add(cid)
            work.cancel()
            return

    async def _leased(self, cid: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` holding ``cid``'s lease, renewed meanwhile and released after; skip
        it when another gateway holds the lease (``lease_wait`` says until when)."""
        try:
            if not await self._take_lease(cid):
                return
        except StoreError as e:
            log.warning("certd: cannot take the lease of %s (%s)", cid, e)
            self.lease_wait[cid] = time.time() + 1.0
            return
        me = asyncio.current_task()
        assert me is not None
        beat = asyncio.create_task(self._heartbeat(cid, me), name=f"certd-lease-{cid}")
        try:
            await job()
        except LeaseLost as e:
            log.warning("certd: lost the lease of %s (%s); leaving its order", cid, e)
        finally:
            beat.cancel()
            self.lost.discard(cid)
            with contextlib.suppress(StoreError):
                await self.store.release_lease(lease_name(cid), self.holder)

    # ------------------------------------------------------------ custom-domain claims
    async def _judge_claims(self, now: float) -> float:
        """Expire old claims (every CLAIM_SWEEP) and start the DNS checks that are due;
        returns when the next one is."""
        nxt = now + MAX_IDLE
        if now >= self.sweep_at:
            self.sweep_at = now + CLAIM_SWEEP
            n = await self.store.expire_claims(now, self.config.api.domain_claim_ttl)
            if n:
                log.info("certd: %d custom-domain claims expired or purged", n)
        nxt = min(nxt, self.sweep_at)
        if self.config.acme is None:
            return nxt
        for chal in [c for c in self.verify_next if c not in self.view.claims]:
            del self.verify_next[chal]
        for chal, claim in self.view.claims.items():
            if chal in self.verifying:
                continue
            when, _ = self.verify_next.get(chal, (0.0, 0))
            if when <= now:
                self.verifying[chal] = self._spawn(self._verify(claim),
                                                   f"certd-verify-{claim.fqdn}")
            else:
                nxt = min(nxt, when)
        return nxt

    async def _verify(self, claim: Domain) -> None:
        """Look for this claim's proof; the store makes the first proven claim the holder."""
        chal = claim.challenge_label
        try:
            assert self.config.acme is not None
            seen = await lookup_domain(claim.fqdn, self.config.acme.resolver)
            gateway = [str(a) for a in (*self.config.zone.gateway_ipv4,
                                        *self.config.zone.gateway_ipv6)]
            ok, detail = judge_domain(claim.fqdn, claim.label, chal, self.zone, gateway, seen)
            if chal not in self.view.claims:
                return
            if ok:
                # Not again while the feed has yet to drop the claim (it holds the domain now):
                # only if it is still pending much later (the write failed) is it re-checked.
                self.verify_next[chal] = (time.time() + VERIFY_CAP, 0)
                if await self.store.verify_claim(chal, f"{detail}; certificate requested"):
                    log.info("certd: %s verified for owner %d (%s)", claim.fqdn,
                             claim.owner_id, detail)
            else:
                _, n = self.verify_next.get(chal, (0.0, 0))
                delay = min(VERIFY_FIRST * 2**n, VERIFY_CAP)
                self.verify_next[chal] = (time.time() + delay, n + 1)
                await self.store.set_claim_detail(chal, f"waiting for DNS: {detail}")
        except StoreError as e:
            log.warning("certd: cannot record the state of %s: %s", claim.fqdn, e)
        finally:
            self.verifying.pop(chal, None)

    async def _retire(self, cid: str) -> None:
        """A custom domain was removed: revoke its certificate, delete its row and TXT
        (one gateway of the fleet does it, holding the certificate's lease)."""
        try:
            await self._leased(cid, lambda: self._retire_leased(cid))
        except StoreError as e:
            log.warning("certd: cleanup of %s failed (%s); will retry", cid, e)
        finally:
            self.cleaning.discard(cid)

    async def _retire_leased(self, cid: str) -> None:
        cert = await self.store.get_certificate(cid)  # the row as it is, not as the view lags
        if cert is not None and cert.chain and self.issuer is not None:
            try:
                if cert.state in (CertState.VALID, CertState.FAILED):
                    await self.issuer.revoke(cert.chain.encode())
                    log.info("certd: revoked the certificate of removed domain %s", cid)
            except Exception as e:  # revocation is best effort; the row goes anyway
                log.warning("certd: could not revoke %s: %s", cid, e)
        name = self.txt_name(cid)
        if name:
            await self.store.remove_txt(name)
        await self.store.delete_certificate(cid)
        self.view.certs.pop(cid, None)
        self.challenge_names.pop(cid, None)

    async def _ari_check(self, cert: Certificate) -> None:
        """Move renew_at into the CA's suggested window when it offers ARI."""
        now = time.time()
        self.ari_next[cert.id] = now + 6 * 3600.0
        try:
            assert self.issuer is not None
            info = await self.issuer.renewal_info(cert.chain.encode())
            if info is None:
                self.ari_next[cert.id] = now + 24 * 3600.0
                return
            parsed = parse_renewal_info(info[0], info[1], now)
            if parsed is None:
                log.warning("certd: malformed renewalInfo for %s", cert.id)
                return
            window, self.ari_next[cert.id] = parsed
            at = apply_ari(cert.renew_at, window, now, self.rng)
            # every gateway asks; the store takes the advice only for the chain it was
            # about (a row renewed meanwhile by another gateway is left alone)
            if at != cert.renew_at and await self.store.set_renew_at(cert.id, cert.chain, at):
                log.info("certd: %s renews at %s per the CA's renewalInfo", cert.id,
                         time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at)))
        except Exception as e:  # ARI is advice: without it the 2/3 rule stands
            log.info("certd: renewalInfo for %s unavailable: %s", cert.id, e)
        finally:
            self.ari_running.discard(cert.id)

    # ------------------------------------------------------------ one attempt
    async def _attempt(self, cid: str, domains: tuple[str, ...]) -> None:
        try:
            await self._leased(cid, lambda: self._order(cid, domains))
        finally:
            self.running.pop(cid, None)

    async def _order(self, cid: str, domains: tuple[str, ...]) -> None:
        """One attempt, holding the lease: from the row as stored (a gateway that died
        mid-order left its URL and key there), resume or order, install or record why not."""
        assert self.issuer is not None and self.config.acme is not None
        stored = await self.store.get_certificate(cid)
        if stored is not None:
            self.view.certs[cid] = stored
        if due_at(stored, domains, stored is not None and stored.in_place) > time.time():
            return  # another gateway finished it meanwhile
        cert = stored or Certificate(cid, domains)
        if tuple(cert.domains) != domains:
            cert = replace(cert, domains=domains, order_url="")
        key = self._order_key(cert)
        published: dict[str, set[str]] = {}
        removed = False
        t0 = time.monotonic()

        async def on_order(url: str) -> None:
            nonlocal cert
            sealed = self.seal.seal(slot("order", cid), certkeys.key_pem(key))
            cert = replace(cert, order_url=url, order_key=sealed)
            await self._put(cert, leased=True)

        try:
            async with self.order_slots:
                issued = await self.issuer.obtain(
                    cid, domains, lambda _ident: self.txt_name(cid), cert.order_url, key,
                    on_order, published,
                )
            await self._remove_txt(cid, published)  # the order is done with them
            removed = True
            cert = await self._install(cert, issued)
            self.metrics.ended("issued", time.monotonic() - t0)
            log.info("certd: certificate %s for %s obtained in %.2f s, valid until %s",
                     cid, ", ".join(domains), time.monotonic() - t0,
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(cert.not_after)))
            if cid != ZONE_CERT and cid in self.view.domains:
                await self.store.set_domain_state(
                    cid, DomainState.ACTIVE, "certificate valid until "
                    + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert.not_after)))
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as e:
            outcome = await self._failed(cid, cert, e)
            self.metrics.ended(outcome, time.monotonic() - t0)
        finally:
            if cid not in self.lost and not removed:  # else the TXT are the new holder's now
                with contextlib.suppress(StoreError):
                    await self._remove_txt(cid, published)

    def _order_key(self, cert: Certificate) -> ec.EllipticCurvePrivateKey:
        """The key stored with the order in flight (whoever created it), else a new one."""
        if cert.order_key and cert.order_url:
            try:
                return certkeys.load_key(self.seal.open(slot("order", cert.id), cert.order_key))
            except (KeySealError, ValueError) as e:
                log.warning("certd: the order key of %s cannot be used (%s); a new order"
                            " follows", cert.id, e)
        return certkeys.new_key()

    async def _remove_txt(self, cid: str, published: dict[str, set[str]]) -> None:
        """Remove this certificate's challenge TXT (a no-op, no serial bump, if none)."""
        for fqdn in published or {self.txt_name(cid): set()}:
            if fqdn:
                await self.store.remove_txt(fqdn)

    async def _install(self, cert: Certificate, issued: Issued) -> Certificate:
        """Chain and sealed key into the row: every gateway's proxy loads them from there."""
        assert self.config.acme is not None
        info = certkeys.chain_info(issued.fullchain)
        if not certkeys.leaf_matches_key(issued.fullchain, issued.key):
            # A resumed order finalized with a key we no longer have: start afresh.
            raise OrderDead("the issued certificate does not match our key")
        new = replace(
            cert, state=CertState.VALID, chain=issued.fullchain.decode("ascii"),
            key=self.seal.seal(slot("cert", cert.id), certkeys.key_pem(issued.key)),
            not_before=info.not_before, not_after=info.not_after,
            renew_at=renew_at(info.not_before, info.not_after, self.config.acme.renew_fraction,
                              self.rng),
            failures=0, next_attempt=0.0, last_error="", order_url="", order_key="",
        )
        await self._put(new, leased=True)
        return new

    async def _put(self, cert: Certificate, leased: bool = False) -> None:
        """Write through: the scheduler must not act on a stale row before the feed catches up.
        ``leased``: only while this process holds the certificate's lease (LeaseLost if not:
        the row and the TXT are the new holder's)."""
        lease = (lease_name(cert.id), self.holder) if leased else None
        if not await self.store.put_certificate(cert, lease):
            self.lost.add(cert.id)
            raise LeaseLost(f"another gateway holds it; {cert.id}'s row is left as it is")
        self.view.certs[cert.id] = cert

    async def _failed(self, cid: str, cert: Certificate, e: Exception) -> str:
        """Record a failed attempt; returns its outcome label for the metrics."""
        now = time.time()
        f = classify(e, self.config.acme.directory if self.config.acme else "")
        if f.unexpected:
            log.exception("certd: unexpected failure for %s", cid)
        if f.forget_account:
            assert self.issuer is not None
            await self.issuer.forget_account()
        msg = f.message
        order_url = cert.order_url if f.keep_order else ""
        failures = cert.failures + 1
        nxt = max(backoff(failures, now, f.kind, self.rng), now + f.not_before)
        new = replace(cert, state=CertState.FAILED, failures=failures, next_attempt=nxt,
                      last_error=msg[:MAX_MESSAGE], order_url=order_url)
        log.warning("certd: certificate %s failed (%d in a row): %s; next attempt in %.0f s",
                    cid, failures, msg, nxt - now)
        with contextlib.suppress(StoreError):
            await self._put(new, leased=True)
            if cid != ZONE_CERT and cid in self.view.domains:
                # a renewal failing leaves the domain served by its current certificate
                state_d = DomainState.ACTIVE if cert.in_place else DomainState.VERIFIED
                await self.store.set_domain_state(
                    cid, state_d, f"certificate request failed ({failures}x): {msg[:200]}")
        return f.outcome


def build(config: Config, store: Store, registry: CollectorRegistry) -> CertService:
    return CertService(config, store, registry)
