"""DNS checks certd makes before it involves the CA.

``authoritative_targets`` decides which servers must serve a TXT before a challenge is
answered: every glue address of the zone's name servers on port 53 -- except a secondary
(an address in ``dns.secondaries``), asked on its port there, and loopback
glue (a test or single-host setup, where dnsd listens on ``dns.listen``, often on a
high port): then the ``dns.listen`` addresses themselves are queried. Wildcard listen
addresses (0.0.0.0, ::) are reached through loopback. Name servers without glue (out of
zone) are resolved at check time.

``judge_domain`` decides whether one claim on a custom domain is proven: its
``_acme-challenge`` CNAME must target that claim's own random label (so the CNAME names
the claim the domain's owner made), and the domain itself must CNAME to the claim's name
under the zone -- or resolve to the gateway addresses (an apex domain cannot have a CNAME;
a held domain later delegated to us by NS resolves to them too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from certd.schedule import poll_delay
from webgateway.addresses import HostPort
from webgateway.config import Config
from webgateway.delegation import secondary_port

Target = tuple[str, int]

log = logging.getLogger(__name__)


def authoritative_targets(config: Config) -> tuple[list[Target], list[str]]:
    """(addresses to query, name servers still to resolve)."""
    out: list[Target] = []
    unresolved: list[str] = []
    for ns, glue in config.zone.nameservers.items():
        if not glue:
            unresolved.append(ns)
        for ip in glue:
            if (port := secondary_port(config, ip)) is not None:
                out.append((str(ip), port))
            elif ip.is_loopback:
                out.extend(_listen_targets(config.dns.listen))
            else:
                out.append((str(ip), 53))
    return sorted(set(out)), unresolved


def _listen_targets(listen: Iterable[HostPort]) -> list[Target]:
    out = []
    for hp in listen:
        host = hp.host
        if host.is_unspecified:
            host = ipaddress.ip_address("::1" if host.version == 6 else "127.0.0.1")
        if hp.port:
            out.append((str(host), hp.port))
    return out


async def query(
    target: Target, qname: str, rdtype: str, timeout: float = 1.0  # noqa: ASYNC109
) -> dns.message.Message:
    """One question to one server: UDP, then TCP when the reply is truncated."""
    q = dns.message.make_query(qname, rdtype)
    q.flags &= ~dns.flags.RD
    resp = await dns.asyncquery.udp(q, target[0], timeout=timeout, port=target[1])
    if resp.flags & dns.flags.TC:
        resp = await dns.asyncquery.tcp(q, target[0], timeout=timeout, port=target[1])
    return resp


def txt_values(resp: dns.message.Message, qname: str) -> set[str]:
    name = dns.name.from_text(qname)
    out: set[str] = set()
    for rrset in resp.answer:
        if rrset.rdtype == dns.rdatatype.TXT and rrset.name == name:
            for rd in rrset:
                out.add(b"".join(rd.strings).decode("ascii", "replace"))
    return out


async def _resolve_ns(names: Sequence[str]) -> list[Target]:
    res = dns.asyncresolver.Resolver()
    out: list[Target] = []
    for ns in names:
        for rdtype in ("A", "AAAA"):
            try:
                ans = await res.resolve(ns, rdtype, lifetime=3.0)
            except dns.exception.DNSException:
                continue
            out.extend((rd.address, 53) for rd in ans)
    return out


class PropagationTimeout(Exception):
    pass


async def wait_propagated(
    config: Config, records: dict[str, set[str]], timeout: float  # noqa: ASYNC109
) -> int:
    """Wait until every authoritative server answers every TXT value; returns rounds used.

    Servers still lagging after the first round are logged once, so an operator sees which
    name server holds up issuance."""
    targets, unresolved = authoritative_targets(config)
    if unresolved:
        targets = sorted(set(targets) | set(await _resolve_ns(unresolved)))
    if not targets:
        raise PropagationTimeout("no authoritative server address to check (zone.nameservers)")
    pending = {(t, fqdn) for t in targets for fqdn in records}
    end = time.monotonic() + timeout
    rounds = 0
    last = ""
    while pending:
        done = set()
        results = await asyncio.gather(
            *(query(t, fqdn, "TXT") for t, fqdn in pending), return_exceptions=True
        )
        for (t, fqdn), r in zip(pending, results, strict=True):
            if isinstance(r, dns.message.Message):
                if records[fqdn] <= txt_values(r, fqdn):
                    done.add((t, fqdn))
                else:
                    last = f"{t[0]}:{t[1]} does not serve the TXT of {fqdn} yet"
            else:
                last = f"{t[0]}:{t[1]} did not answer for {fqdn}: {r or type(r).__name__}"
        pending -= done
        if not pending:
            break
        if rounds == 0:
            lagging = ", ".join(sorted({f"{t[0]}:{t[1]}" for t, _ in pending}))
            log.info("certd: waiting up to %.0f s until %s serve the challenge TXT", timeout,
                     lagging)
        if time.monotonic() >= end:
            raise PropagationTimeout(f"after {timeout:.0f} s, {last}")
        await asyncio.sleep(poll_delay(rounds))
        rounds += 1
    return rounds


# ---------------------------------------------------------------- custom domains

@dataclass(frozen=True)
class DomainLookup:
    challenge_cname: str | None  # target of _acme-challenge.D, if any
    chain: tuple[str, ...]  # CNAME targets followed from D
    addresses: frozenset[str]  # A/AAAA D finally resolves to
    error: str = ""


def judge_domain(
    fqdn: str,
    label: str,
    challenge_label: str,
    zone: str,
    gateway: Iterable[str],
    seen: DomainLookup,
) -> tuple[bool, str]:
    """(pointed at us?, a sentence for the owner)."""
    want_chal = f"{challenge_label}._acme.{zone}"
    want_name = f"{label}.{zone}"
    if seen.challenge_cname != want_chal:
        got = seen.challenge_cname or "no CNAME"
        return False, (
            f"_acme-challenge.{fqdn} has {got}; create CNAME _acme-challenge.{fqdn} -> {want_chal}"
            + (f" ({seen.error})" if seen.error else "")
        )
    gw = set(gateway)
    if want_name in seen.chain:
        return True, f"CNAMEs in place ({fqdn} -> {want_name})"
    if seen.addresses and seen.addresses <= gw:
        return True, f"{fqdn} resolves to the gateway addresses"
    got = ", ".join(seen.chain) or ", ".join(sorted(seen.addresses)) or "nothing"
    return False, f"{fqdn} points to {got}; create CNAME {fqdn} -> {want_name}"


def _strip(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


async def lookup_domain(fqdn: str, resolver_addr: HostPort | None) -> DomainLookup:
    res = dns.asyncresolver.Resolver(configure=resolver_addr is None)
    if resolver_addr is not None:
        res.nameservers = [str(resolver_addr.host)]
        res.port = resolver_addr.port
    res.lifetime = 3.0
    chal: str | None = None
    error = ""
    try:
        ans = await res.resolve(f"_acme-challenge.{fqdn}", "CNAME", raise_on_no_answer=False)
        for rrset in ans.response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                chal = _strip(next(iter(rrset)).target)
                break
    except dns.exception.DNSException as e:
        error = f"lookup failed: {type(e).__name__}"
    chain: list[str] = []
    addrs: set[str] = set()
    for rdtype in ("A", "AAAA"):
        try:
            ans = await res.resolve(fqdn, rdtype, raise_on_no_answer=False)
        except dns.exception.DNSException:
            continue
        for rrset in ans.response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME:
                chain.extend(_strip(rd.target) for rd in rrset)
            elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addrs.update(rd.address for rd in rrset)
    return DomainLookup(chal, tuple(dict.fromkeys(chain)), frozenset(addrs), error)
