"""``webgateway check``: is the zone delegated to this gateway the way the config says?

Gathering (DNS queries with dnspython) is kept apart from judging (``judge``, pure), so
the rules are unit-tested on values and the live check stays a thin shell.

What is checked, as a resolver on the Internet would see it:
- the parent zone's servers refer ``ZONE`` to exactly our NS names, with glue equal to ours;
- every one of our name servers answers authoritatively for ``ZONE`` with the same SOA serial;
- a recursive resolver (``--resolver`` or the system's) reaches the zone through that chain.

Our name servers are asked on the port the config listens on (``[dns] listen``) or
``--port``, so a gateway whose DNS is not on port 53 (a local one) can be checked too; a
listed secondary is asked on its port in ``[dns] secondaries``.
A failed exchange is told in our words (``explain``), never in the DNS library's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from webgateway.addresses import HostPort, IPAddress, parse_hostport
from webgateway.config import Config, ConfigError
from webgateway.dnsname import is_within

TIMEOUT = 3.0


@dataclass
class Observed:
    parent: str = ""
    parent_servers: dict[str, list[str]] = field(default_factory=dict)  # NS name -> addresses
    referral_ns: dict[str, set[str]] = field(default_factory=dict)  # parent server -> NS names
    referral_glue: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    soa_serials: dict[str, int | str] = field(default_factory=dict)  # "ns (addr)" -> serial/error
    resolver_soa: int | str | None = None
    errors: list[str] = field(default_factory=list)
    parent_ds: dict[str, set[str]] = field(default_factory=dict)  # parent server -> DS texts
    our_ds: set[str] = field(default_factory=set)  # DS (SHA-256) of the DNSKEYs we serve
    signatures: dict[str, float | str] = field(default_factory=dict)  # ns -> expiry / error


def _ds_key(text: str) -> str:
    """A DS as compared: key tag, algorithm, digest type and digest, case-folded."""
    return " ".join(text.split()).upper()


def judge_dnssec(config: Config, obs: Observed, now: float) -> list[tuple[bool, str]]:
    """The DS chain (the parent's DS names a key we serve) and our signatures' expiry."""
    zone = config.zone.name
    out: list[tuple[bool, str]] = []
    if not config.dnssec.enabled:
        for server, ds in sorted(obs.parent_ds.items()):
            if ds:
                out.append((False, f"parent server {server} has a DS for {zone} but [dnssec]"
                                   " enabled is false: remove the DS at your registrar (or"
                                   " enable DNSSEC), or validating resolvers fail every answer"))
        return out
    ours = {_ds_key(d) for d in obs.our_ds}
    if not ours:
        out.append((False, f"our name servers publish no DNSKEY for {zone}: is dnsd running"
                           " this configuration ([dnssec] enabled = true)?"))
    for server, ds in sorted(obs.parent_ds.items()):
        theirs = {_ds_key(d) for d in ds}
        if theirs & ours:
            out.append((True, f"DS for {zone} at {server} matches our key"))
        elif not theirs:
            out.append((False, f"parent server {server} has no DS for {zone}: the zone is not"
                               " validated; give your registrar the output of"
                               " `webgateway zone ds`"))
        else:
            out.append((False, f"DS for {zone} at {server} ({'; '.join(sorted(ds))}) matches"
                               " none of our keys: resolvers that validate fail every answer;"
                               " replace it at your registrar with the output of"
                               " `webgateway zone ds`"))
    for server, exp in sorted(obs.signatures.items()):
        if isinstance(exp, str):
            out.append((False, f"signatures from {server} do not validate: {exp}"))
        elif exp - now < 2 * 86400:
            out.append((False, f"signatures from {server} expire in {(exp - now) / 3600:.0f} h:"
                               " is dnsd running, and is its clock right?"))
        else:
            out.append((True, f"signatures from {server} are valid for"
                              f" {(exp - now) / 86400:.1f} more days"))
    return out


def judge(config: Config, obs: Observed) -> list[tuple[bool, str]]:
    """Findings as (ok, sentence); every failed one says what to fix."""
    zone = config.zone.name
    ours = set(config.zone.nameservers)
    out: list[tuple[bool, str]] = [(False, e) for e in obs.errors]
    if not obs.parent_servers:
        out.append((False, f"could not find the parent zone of {zone}: is the domain registered?"))
    for server, ns in sorted(obs.referral_ns.items()):
        if ns == ours:
            out.append(
                (True, f"parent server {server} delegates {zone} to {', '.join(sorted(ns))}")
            )
        else:
            missing, extra = sorted(ours - ns), sorted(ns - ours)
            fix = []
            if missing:
                fix.append(f"add NS {', '.join(missing)}")
            if extra:
                fix.append(f"remove NS {', '.join(extra)}")
            out.append(
                (
                    False,
                    f"parent server {server} has NS {', '.join(sorted(ns)) or 'none'}"
                    f" for {zone}: at your registrar, {' and '.join(fix)}",
                )
            )
        glue = obs.referral_glue.get(server, {})
        for name, addrs in sorted(config.zone.nameservers.items()):
            if not is_within(name, zone):
                continue
            want = {str(a) for a in addrs}
            have = glue.get(name, set())
            if have == want:
                out.append((True, f"glue for {name} at {server} is {', '.join(sorted(have))}"))
            else:
                out.append(
                    (
                        False,
                        f"glue for {name} at {server} is"
                        f" {', '.join(sorted(have)) or 'missing'}; set it to"
                        f" {', '.join(sorted(want))} at your registrar",
                    )
                )
    good = {k: v for k, v in obs.soa_serials.items() if isinstance(v, int)}
    for server, v in sorted(obs.soa_serials.items()):
        if not isinstance(v, int):
            out.append((False, f"our name server {server} does not answer for {zone}: {v}"))
    if good:
        if len(set(good.values())) == 1:
            out.append((True, f"SOA serial {next(iter(good.values()))} on every name server"))
        else:
            listing = ", ".join(f"{k}={v}" for k, v in sorted(good.items()))
            out.append(
                (
                    False,
                    f"SOA serials differ between name servers ({listing}):"
                    " they must serve the same store",
                )
            )
    if obs.resolver_soa is not None:
        if isinstance(obs.resolver_soa, int):
            out.append((True, f"the resolver reaches {zone} (SOA serial {obs.resolver_soa})"))
        else:
            out.append((False, f"the resolver cannot reach {zone}: {obs.resolver_soa}"))
    return out


def explain(e: BaseException) -> str:
    """A failed DNS exchange as a plain sentence (the library's wording can mislead:
    dnspython says "This should never happen!" when a resolver has no zone up to the root).
    """
    if isinstance(e, dns.resolver.NXDOMAIN):
        return "the name does not exist (NXDOMAIN)"
    if isinstance(e, dns.resolver.NoAnswer):
        return "the answer holds no record of the type asked for"
    if isinstance(e, dns.resolver.NoRootSOA):
        return (
            "no zone was found up to the root (every SOA query came back empty):"
            " use a recursive resolver that reaches the Internet (--resolver HOST:PORT)"
        )
    if isinstance(e, dns.resolver.NoNameservers):
        errors = e.kwargs.get("errors") or []
        why = sorted({w if isinstance(w, str) else explain(w) for *_, w, _r in errors})
        return f"every server refused or failed ({'; '.join(why) or 'no answer'})"
    if isinstance(e, dns.exception.Timeout):
        return (
            f"no answer within {TIMEOUT:g} s: is the server running, and are UDP and TCP"
            " to its port open?"
        )
    if isinstance(e, ConnectionRefusedError):
        return "the connection was refused: nothing listens on that address and port"
    if isinstance(e, OSError):
        return f"the network refused the query ({e.strerror or type(e).__name__})"
    if isinstance(e, dns.exception.FormError | EOFError | dns.message.Truncated):
        return "the reply was malformed or did not match the query"
    return f"the DNS exchange failed ({type(e).__name__})"


def secondary_port(config: Config, ip: IPAddress) -> int | None:
    """The port of ``ip`` when it is one of ``[dns] secondaries``: a secondary listed in
    ``[zone] nameservers`` serves DNS where its NOTIFYs go, which may not be port 53."""
    for hp in config.dns.secondaries:
        if hp.host == ip:
            return hp.port
    return None


def ns_port(config: Config, ip: IPAddress, override: int | None) -> int:
    """The port to ask one of our name servers on: a secondary's own (``secondary_port``),
    else ``--port``, else the listener's own."""
    if (port := secondary_port(config, ip)) is not None:
        return port
    if override is not None:
        return override
    for hp in config.dns.listen:
        if hp.host == ip:
            return hp.port
    return config.dns.listen[0].port


def _query(qname: str, rdtype: str, where: str, port: int,
           dnssec: bool = False) -> dns.message.Message:
    q = dns.message.make_query(qname, rdtype, want_dnssec=dnssec)
    q.flags &= ~dns.flags.RD
    r = dns.query.udp(q, where, timeout=TIMEOUT, port=port)
    if r.flags & dns.flags.TC:
        r = dns.query.tcp(q, where, timeout=TIMEOUT, port=port)
    return r


def _resolver(spec: str | None) -> dns.resolver.Resolver:
    if spec is None:
        return dns.resolver.Resolver()
    try:
        hp = parse_hostport(spec)
    except ValueError as e:
        raise ConfigError("--resolver", str(e)) from None
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [str(hp.host)]
    r.port = hp.port
    r.lifetime = TIMEOUT * 2
    return r


def observe(config: Config, resolver_spec: str | None, port: int | None = None) -> Observed:
    zone = config.zone.name
    res = _resolver(resolver_spec)
    obs = Observed()
    _find_parent(zone, res, obs)
    for host, addrs in obs.parent_servers.items():
        for addr in addrs:
            key = f"{host} ({addr})"
            try:
                r = _query(zone, "NS", addr, 53)
            except Exception as e:
                obs.errors.append(f"parent server {key} did not answer: {explain(e)}")
                continue
            ns_names: set[str] = set()
            glue: dict[str, set[str]] = {}
            for rrset in r.authority + r.answer:
                if rrset.rdtype == dns.rdatatype.NS and rrset.name.to_text(True) == zone:
                    ns_names |= {x.target.to_text(omit_final_dot=True) for x in rrset}
            for rrset in r.additional:
                if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    glue.setdefault(rrset.name.to_text(True), set()).update(
                        str(ipaddress.ip_address(x.address)) for x in rrset
                    )
            obs.referral_ns[key] = ns_names
            obs.referral_glue[key] = glue
            _ask_ds(zone, key, addr, obs)
    obs.soa_serials.update(nameserver_serials(config, port))
    if config.dnssec.enabled:
        for key, ip, p in _our_servers(config, port):
            obs.signatures[key] = _signatures(zone, ip, p, obs.our_ds)
    try:
        ans = res.resolve(zone, "SOA")
        obs.resolver_soa = int(ans[0].serial)
    except Exception as e:
        obs.resolver_soa = explain(e)
    return obs


def _find_parent(zone: str, res: dns.resolver.Resolver, obs: Observed) -> None:
    """The parent zone and its servers' addresses into ``obs`` (or why not)."""
    try:
        parent = dns.resolver.zone_for_name(dns.name.from_text(zone).parent(), resolver=res)
        obs.parent = parent.to_text(omit_final_dot=True)
        for ns in res.resolve(parent, "NS"):
            host = ns.target.to_text(omit_final_dot=True)
            addrs = [a for t in ("A", "AAAA") for a in _try_resolve(res, host, t)]
            obs.parent_servers[host] = addrs
    except Exception as e:
        obs.errors.append(f"looking up the parent of {zone} failed: {explain(e)}")


def _ask_ds(zone: str, key: str, addr: str, obs: Observed) -> None:
    try:
        r = _query(zone, "DS", addr, 53)
    except Exception as e:
        obs.errors.append(f"parent server {key} did not answer for DS: {explain(e)}")
        return
    obs.parent_ds[key] = {
        x.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.DS for x in rr}


def parent_has_ds(config: Config, resolver_spec: str | None, ds: str) -> tuple[bool, str]:
    """Does every server of the parent zone serve ``ds`` ("tag alg digest-type digest") for
    our zone? (yes/no, and a sentence saying what was seen)."""
    zone = config.zone.name
    obs = Observed()
    _find_parent(zone, _resolver(resolver_spec), obs)
    for host, addrs in obs.parent_servers.items():
        for addr in addrs:
            _ask_ds(zone, f"{host} ({addr})", addr, obs)
    if obs.errors:
        return False, "; ".join(obs.errors)
    if not obs.parent_ds:
        return False, f"found no server of the parent zone of {zone}"
    want = _ds_key(ds)
    missing = sorted(k for k, v in obs.parent_ds.items() if want not in {_ds_key(d) for d in v})
    if missing:
        return False, f"the parent servers {', '.join(missing)} do not serve the DS yet"
    return True, f"every parent server ({len(obs.parent_ds)}) serves the DS"


def _signatures(zone: str, addr: str, port: int, ds_out: set[str]) -> float | str:
    """The earliest expiry of the RRSIGs over our DNSKEY and SOA once both validate (the
    DS of the DNSKEYs served go to ``ds_out``), or why they do not."""
    name = dns.name.from_text(zone)
    try:
        keys = _query(zone, "DNSKEY", addr, port, dnssec=True)
        soa = _query(zone, "SOA", addr, port, dnssec=True)
    except Exception as e:
        return explain(e)
    try:
        keyset = keys.find_rrset(keys.answer, name, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    except KeyError:
        return "no DNSKEY in the answer"
    ds_out.update(dns.dnssec.make_ds(name, k, "SHA256").to_text() for k in keyset if k.flags & 1)
    expiry = []
    for msg, rdtype in ((keys, dns.rdatatype.DNSKEY), (soa, dns.rdatatype.SOA)):
        try:
            rrset = msg.find_rrset(msg.answer, name, dns.rdataclass.IN, rdtype)
            sig = msg.find_rrset(msg.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                                 rdtype)
            dns.dnssec.validate(rrset, sig, {name: keyset})
        except KeyError:
            return f"no RRSIG over the {dns.rdatatype.to_text(rdtype)}"
        except dns.exception.ValidationFailure as e:
            return f"the {dns.rdatatype.to_text(rdtype)} RRSIG is invalid ({e})"
        expiry.append(min(s.expiration for s in sig))
    return float(min(expiry))


def soa_serial(zone: str, addr: str, port: int) -> int | str:
    """The SOA serial ``addr`` serves authoritatively for ``zone``, or why there is none."""
    try:
        r = _query(zone, "SOA", addr, port)
    except Exception as e:
        return explain(e)
    soa = [x for rr in r.answer if rr.rdtype == dns.rdatatype.SOA for x in rr]
    if not r.flags & dns.flags.AA or not soa:
        return "no authoritative SOA in the answer"
    return int(soa[0].serial)


def nameserver_serials(config: Config, port: int | None = None) -> dict[str, int | str]:
    """Each listed name server ("ns (addr)") with the serial it serves, or why not.

    Shared by ``webgateway check`` and ``webgateway status``.
    """
    return {key: soa_serial(config.zone.name, ip, p) for key, ip, p in _our_servers(config, port)}


def _our_servers(config: Config, port: int | None) -> list[tuple[str, str, int]]:
    """("ns (addr)", address, port) for every address of every listed name server."""
    out = []
    for host, ips in config.zone.nameservers.items():
        for ip in ips:
            p = ns_port(config, ip, port)
            out.append((f"{host} ({ip if p == 53 else HostPort(ip, p)})", str(ip), p))
    return out


def _try_resolve(res: dns.resolver.Resolver, host: str, rdtype: str) -> list[str]:
    try:
        return [a.to_text() for a in res.resolve(host, rdtype)]
    except Exception:
        return []

