"""The zone view: what dnsd serves, kept current from the store, answering from packed bytes.

Answers are cached per node as (header, body) pairs that do not depend on the query's
letter case or length: the answer's owner is a pointer to the question (offset 12) and
every other name is written uncompressed. So one packed answer serves every reserved
name (they share a node), and a reply is the header with the ID patched, the query's own
question bytes (0x20 case kept) and the body. Every store change bumps ``gen``; caches
of older generations are dropped on first use, so a change costs O(what changed).
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from dnsd import wire
from dnsd.signer import QNAME, Denial, RRset, Signer
from webgateway import zonekeys
from webgateway.config import DnssecConfig, ZoneConfig
from webgateway.dnsname import is_within
from webgateway.model import ChangeSet, Domain, Gateway, Name, Snapshot

log = logging.getLogger(__name__)

# node kinds
NODE = 0
ENT = 1  # empty non-terminal: NODATA for every type
NX = 2
OUTSIDE = 3  # not in any zone we serve: REFUSED

#: Minimal ANY (RFC 8482): the one RRset we answer with, in this order of preference.
_ANY_ORDER = (wire.A, wire.AAAA, wire.TXT, wire.SOA, wire.NS, wire.CAA)

Rrsets = dict[int, tuple[bytes, ...]]
Packed = tuple[bytes, bytes]
#: flags, rcode, answer, authority, additional, and what a signed negative answer proves
Sections = tuple[int, int, list[RRset], list[RRset], list[RRset], Denial | None]
Records = frozenset[tuple[int, bytes]]  # (type, rdata) at one owner, for zone transfers


class ZoneContents(NamedTuple):
    """A zone's records at one serial: node records, and the user labels whose records
    are just the gateway's (kept apart: a million of them stream without a tuple each)."""

    records: list[tuple[bytes, int, bytes]]  # (owner, type, rdata), apex first
    labels: list[bytes]  # raw labels directly under the zone apex
    gateway: list[tuple[int, bytes]]  # the records of each of those labels
    with_node: set[bytes]  # labels that also have a node: their records are in ``records``


class Node:
    """Everything at one owner name, plus its packed answers for the current generation."""

    __slots__ = ("ancestors", "cache", "cname", "gen", "kind", "name", "rrsets", "ttl", "zone")

    def __init__(
        self,
        name: bytes,
        zone: bytes,
        kind: int = NODE,
        rrsets: Rrsets | None = None,
        cname: bytes | None = None,
    ) -> None:
        self.name = name
        self.zone = zone
        self.kind = kind
        self.rrsets: Rrsets = rrsets or {}
        self.cname = cname
        self.cache: dict[tuple[int, int], Packed] = {}
        self.gen = -1
        self.ancestors: tuple[bytes, ...] = ()
        self.ttl = 0  # 0: the zone's TTL


def _ancestors(name: bytes, zone: bytes) -> tuple[bytes, ...]:
    """The names strictly between ``name`` and its zone apex (empty non-terminal candidates)."""
    out = []
    pos = name[0] + 1 if name[0] else len(name)
    while pos < len(name) - len(zone):
        out.append(name[pos:])
        pos += name[pos] + 1
    return tuple(out)


class ZoneView:
    """Implements the follower's View (``load``/``apply``) and ``answer(qname, qtype, ekey)``."""

    def __init__(
        self,
        zone: ZoneConfig,
        account_key: str | None = None,
        dnssec: DnssecConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``account_key``: the store meta key of the ACME account URL, when CAA records
        carry the RFC 8657 ``accounturi`` binding (``zone.caa_accounturi``). ``dnssec``:
        sign DO=1 answers with the key the store's meta holds (``zonekeys``)."""
        self.config = zone
        self.dnssec = dnssec if dnssec is not None and dnssec.enabled else None
        self.clock = clock
        self.signer: Signer | None = None
        self.keys_text: str | None = None
        self.zone_keys: list[zonekeys.ZoneKey] = []
        #: The private keys of the keys in the zone, by secrets row: meta holds only the
        #: public halves, so dnsd's shell opens these from the store before a key change
        #: reaches the view (``open_keys``).
        self.private_keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.account_key = account_key if zone.caa_accounturi else None
        self.account_url = ""
        self.apex = wire.name_to_wire(zone.name)
        self.ttl = zone.ttl
        self.neg_ttl = min(zone.negative_ttl, zone.ttl)
        ns_names = list(zone.nameservers)
        self.ns_wire = tuple(wire.name_to_wire(n) for n in ns_names)
        self.mname = self.ns_wire[0]
        local, _, host = zone.hostmaster.partition("@")
        local_raw = (local if host else "hostmaster").encode("ascii")[:63]
        self.rname = bytes([len(local_raw)]) + local_raw + wire.name_to_wire(host or zone.name)
        self.gateway: Rrsets = {}
        if zone.gateway_ipv4:
            self.gateway[wire.A] = tuple(a.packed for a in zone.gateway_ipv4)
        if zone.gateway_ipv6:
            self.gateway[wire.AAAA] = tuple(a.packed for a in zone.gateway_ipv6)
        # static records from the configuration, by owner
        self.static: dict[bytes, Rrsets] = {}
        apex: Rrsets = {wire.NS: self.ns_wire, **self.gateway}
        self.static[self.apex] = apex
        self._set_caa()
        self.glue: dict[bytes, Rrsets] = {}
        for ns, addrs in zone.nameservers.items():
            w = wire.name_to_wire(ns)
            sets: Rrsets = {}
            v4 = tuple(a.packed for a in addrs if isinstance(a, ipaddress.IPv4Address))
            v6 = tuple(a.packed for a in addrs if isinstance(a, ipaddress.IPv6Address))
            if v4:
                sets[wire.A] = v4
            if v6:
                sets[wire.AAAA] = v6
            if is_within(ns, zone.name) and sets:
                self.glue[w] = sets
                self.static.setdefault(w, {}).update(sets)
        self.gen = 0
        self.serial = 0
        #: While a journal records a change: owner -> (zone, records) before it.
        self.touched: dict[bytes, tuple[bytes | None, Records]] | None = None
        self._reset()

    def _reset(self) -> None:
        self.labels: set[bytes] = set()
        #: The same labels sorted, made on the first zone transfer (1.5 s at 1M names) and
        #: then kept in step: a secondary builds its zone faster from sorted names, and a
        #: list copies faster than a set.
        self.label_order: list[bytes] | None = None
        #: The loaded snapshot's labels in the store's order, kept until the first change
        #: or sort: SQLite hands them sorted, and sorting a sorted list takes 16 ms at 1M
        #: names where sorting the set takes 0.6 s (dnsd sorts at start-up with TSIG).
        self.as_loaded: Sequence[bytes] | None = None
        self.txt: dict[bytes, tuple[str, ...]] = {}
        self.domains: dict[str, Domain] = {}
        self.domain_apex: set[bytes] = set()  # custom domains (zones, when outside ours)
        self.cnames: dict[bytes, bytes] = {}  # _acme-challenge.D -> <label>._acme.ZONE
        self.targets: dict[bytes, int] = {}  # challenge targets -> how many domains use them
        self.zones: set[bytes] = {self.apex}
        self.nodes: dict[bytes, Node] = {}
        self.ent: dict[bytes, int] = {}
        self.pseudo: dict[tuple[int, bytes], Node] = {}
        #: tunnel names (raw labels), the fleet's gateways, and which hold each tunnel name
        self.tunnel_labels: set[bytes] = set()
        self.gateways: dict[str, Gateway] = {}
        self.held: dict[str, frozenset[str]] = {}
        self.gateway_node = Node(b"", self.apex, NODE, dict(self.gateway))
        self.outside = Node(b"", b"", OUTSIDE)
        for name in self.static:
            self._rebuild(name)

    # ------------------------------------------------------------------ the View protocol
    def load(self, snapshot: Snapshot) -> None:
        if self.account_key is not None:
            self.account_url = snapshot.meta.get(self.account_key, "")
            self._set_caa()
        self._set_keys(snapshot.meta.get(zonekeys.META_KEY))
        self._reset()
        self.serial = snapshot.serial
        self.labels = snapshot.label_set()
        self.as_loaded = snapshot.labels
        for d in snapshot.domains.values():
            self._set_domain(d.fqdn, d)
        for fqdn, values in snapshot.txt.items():
            self._set_txt(fqdn, values)
        self.gateways = dict(snapshot.gateways)
        self.held = dict(snapshot.tunnels)
        for label, name in snapshot.names.items():
            if name.tunnel:
                self._set_label(label, name)
        self.gen += 1

    def apply(self, changes: ChangeSet) -> None:
        self.serial = changes.serial
        self.as_loaded = None
        for label, name in changes.names.items():
            self._set_label(label, name)
        self._set_fleet(changes)
        for fqdn, dom in changes.domains.items():
            self._set_domain(fqdn, dom)
        for fqdn, values in changes.txt.items():
            self._set_txt(fqdn, values)
        if self.account_key is not None and self.account_key in changes.meta:
            self.account_url = changes.meta[self.account_key] or ""
            self._set_caa()
            self._rebuild(self.apex)
        if zonekeys.META_KEY in changes.meta and self._set_keys(changes.meta[zonekeys.META_KEY]):
            for apex in self.zones:
                self._rebuild(apex)
        self.gen += 1

    def bump(self, serial: int) -> None:
        """A serial change with nothing for us in it: the SOA still moves."""
        self.serial = serial
        self.gen += 1

    # ------------------------------------------------------------------ sources -> nodes
    def _set_keys(self, text: str | None) -> bool:
        """Sign with the stored keys (True when they changed). Unreadable key material is
        logged without its content and the previous keys stay in use."""
        if self.dnssec is None or text == self.keys_text:
            return False
        if text is None:
            self.signer, self.keys_text = None, None
            return True
        try:
            keys = zonekeys.load(text)
            signing = [k if k.private is not None else
                       replace(k, private=self._private(k)) for k in zonekeys.in_zone(keys)]
        except zonekeys.KeyMaterialError as e:
            log.error("dnssec: %s; answers keep the previous keys", e)
            return False
        self.signer = Signer(signing, self.dnssec.signature_validity,
                             self.dnssec.signature_refresh, self.clock,
                             self.dnssec.signature_cache)
        self.keys_text = text
        self.zone_keys = keys
        self.private_keys = zonekeys.privates(signing)  # a retired key's goes
        return True

    def _private(self, k: zonekeys.ZoneKey) -> ec.EllipticCurvePrivateKey:
        private = self.private_keys.get(zonekeys.secret_name(k))
        if private is None:
            raise zonekeys.KeyMaterialError(f"the private key of DNSSEC key {k.tag} was not"
                                            " opened from the store")
        return private

    def needs_private(self, text: str | None) -> list[zonekeys.ZoneKey]:
        """The keys in the zone ``text`` (meta) names whose private key the view lacks."""
        if self.dnssec is None or text is None or text == self.keys_text:
            return []
        try:
            keys = zonekeys.in_zone(zonekeys.load(text))
        except zonekeys.KeyMaterialError:
            return []  # reported when the view reads it
        return [k for k in keys
                if k.private is None and zonekeys.secret_name(k) not in self.private_keys]

    def _keysets(self, apex: bytes) -> Rrsets:
        """DNSKEY (every key in the zone), CDS and CDNSKEY (the key the parent should
        trust) at a zone apex; nothing while the zone is unsigned."""
        if self.signer is None:
            return {}
        dnskeys = tuple(k.dnskey for k in zonekeys.in_zone(self.zone_keys))
        parent = zonekeys.for_parent(self.zone_keys)
        return {zonekeys.DNSKEY: dnskeys, zonekeys.CDS: tuple(k.ds(apex) for k in parent),
                zonekeys.CDNSKEY: tuple(k.dnskey for k in parent)}

    def _set_caa(self) -> None:
        apex = self.static[self.apex]
        bind = f"; accounturi={self.account_url}" if self.account_url else ""
        if self.config.caa_issuers:
            apex[wire.CAA] = tuple(
                wire.caa_rdata("issue", i + bind) for i in self.config.caa_issuers
            )

    def _set_fleet(self, changes: ChangeSet) -> None:
        """Gateways that came or went, and tunnel names held by other gateways now: the
        tunnel names they concern are answered anew."""
        labels = set(changes.tunnels)
        for gid, gw in changes.gateways.items():
            if gw is None:
                self.gateways.pop(gid, None)
            else:
                self.gateways[gid] = gw
            labels.update(label for label, ids in self.held.items() if gid in ids)
        for label, ids in changes.tunnels.items():
            if ids:
                self.held[label] = ids
            else:
                self.held.pop(label, None)
        for label in labels:
            raw = label.encode("ascii", "replace")
            if raw in self.tunnel_labels:
                self._rebuild(bytes([len(raw)]) + raw + self.apex)

    def _tunnel_sets(self, label: str) -> Rrsets:
        """A tunnel name's addresses: those of the gateways holding a live tunnel for it
        (a client that goes there is served), else every gateway's (as for any name)."""
        v4: dict[bytes, None] = {}
        v6: dict[bytes, None] = {}
        for gid in sorted(self.held.get(label, ())):
            gw = self.gateways.get(gid)
            if gw is not None:
                v4.update(dict.fromkeys(a.packed for a in gw.ipv4))
                v6.update(dict.fromkeys(a.packed for a in gw.ipv6))
        if not v4 and not v6:
            return self.gateway
        sets: Rrsets = {}
        if v4:
            sets[wire.A] = tuple(v4)
        if v6:
            sets[wire.AAAA] = tuple(v6)
        return sets

    def _set_label(self, label: str, name: Name | None) -> None:
        raw = label.encode("ascii")
        self._touch(bytes([len(raw)]) + raw + self.apex)
        was_tunnel = raw in self.tunnel_labels
        if name is not None and name.tunnel:
            self.tunnel_labels.add(raw)
        else:
            self.tunnel_labels.discard(raw)
        order = self.label_order
        if name is None:
            if raw in self.labels:
                self.labels.discard(raw)
                if order is not None:
                    del order[bisect.bisect_left(order, raw)]
        elif raw not in self.labels:
            self.labels.add(raw)
            if order is not None:
                bisect.insort(order, raw)
        w = bytes([len(raw)]) + raw + self.apex
        if w in self.nodes or was_tunnel or raw in self.tunnel_labels:
            self._rebuild(w)

    def _set_txt(self, fqdn: str, values: Iterable[str]) -> None:
        try:
            w = wire.name_to_wire(fqdn)
        except (ValueError, UnicodeError):
            return
        vals = tuple(values)
        if vals:
            self.txt[w] = vals
        else:
            self.txt.pop(w, None)
        self._rebuild(w)

    def _set_domain(self, fqdn: str, dom: Domain | None) -> None:
        """The feed's ``domains`` carry only the claim holding each domain (verified or
        active): a domain is served as a zone, with its ``_acme-challenge`` CNAME to that
        claim's target, only once its owner's proof was seen; before that the owner's DNS
        holds the CNAMEs and we serve nothing for it (a pending claim proves nothing)."""
        old = self.domains.pop(fqdn, None)
        if old is not None:
            self._drop_domain(old)
        if dom is None:
            return
        try:
            w = wire.name_to_wire(dom.fqdn)
            chal = b"\x0f_acme-challenge" + w
            target = wire.name_to_wire(dom.challenge_label + "._acme." + self.config.name)
        except (ValueError, UnicodeError):
            return
        if len(chal) > wire.MAX_NAME:
            return
        self.domains[fqdn] = dom
        self.domain_apex.add(w)
        if not is_within(dom.fqdn, self.config.name):
            self.zones.add(w)
        self.cnames[chal] = target
        self.targets[target] = self.targets.get(target, 0) + 1
        for name in (w, chal, target, *self._txt_under(w)):
            self._rebuild(name)

    def _txt_under(self, apex: bytes) -> list[bytes]:
        """TXT owners below a custom domain: their zone comes and goes with it."""
        return [n for n in self.txt if n.endswith(apex)]

    def _drop_domain(self, dom: Domain) -> None:
        try:
            w = wire.name_to_wire(dom.fqdn)
            target = wire.name_to_wire(dom.challenge_label + "._acme." + self.config.name)
        except (ValueError, UnicodeError):
            return
        chal = b"\x0f_acme-challenge" + w
        self.domain_apex.discard(w)
        if w != self.apex:
            self.zones.discard(w)
        self.cnames.pop(chal, None)
        left = self.targets.get(target, 0) - 1
        if left > 0:
            self.targets[target] = left
        else:
            self.targets.pop(target, None)
        for name in (chal, target, w, *self._txt_under(w)):
            self._rebuild(name)

    def zone_of(self, name: bytes) -> bytes | None:
        """The closest enclosing zone apex we serve, by label boundaries."""
        pos = 0
        zones = self.zones
        while True:
            suffix = name[pos:] if pos else name
            if suffix in zones:
                return suffix
            if not name[pos]:
                return None
            pos += name[pos] + 1

    def _rebuild(self, name: bytes) -> None:
        self._touch(name)
        zone = self.zone_of(name)
        rrsets: Rrsets = {}
        cname = None
        ttl = 0
        if zone is not None:
            if name in self.domain_apex:
                rrsets.update(self.gateway)
                if name == zone:
                    rrsets[wire.NS] = self.ns_wire
            first = name[0]
            if first and name[first + 1 :] == self.apex and name[1 : first + 1] in self.labels:
                raw = name[1 : first + 1]
                if raw in self.tunnel_labels:
                    rrsets.update(self._tunnel_sets(raw.decode("ascii")))
                    ttl = self.config.tunnel_ttl
                else:
                    rrsets.update(self.gateway)
            rrsets.update(self.static.get(name, {}))  # configured records win
            if name == zone:
                rrsets.update(self._keysets(name))
            cname = self.cnames.get(name)
            if cname is None and name in self.txt:
                rrsets[wire.TXT] = tuple(wire.txt_rdata(v) for v in self.txt[name])
        exists = zone is not None and (
            rrsets or cname is not None or name in self.targets or name == zone
        )
        old = self.nodes.pop(name, None)
        if old is not None:
            for a in old.ancestors:
                left = self.ent[a] - 1
                if left:
                    self.ent[a] = left
                else:
                    del self.ent[a]
        if not exists or zone is None:
            return
        node = Node(name, zone, NODE, rrsets, cname)
        node.ttl = ttl
        node.ancestors = _ancestors(name, zone)
        for a in node.ancestors:
            self.ent[a] = self.ent.get(a, 0) + 1
        self.nodes[name] = node

    # ------------------------------------------------------------------ zone transfers
    def _touch(self, name: bytes) -> None:
        if self.touched is not None and name not in self.touched:
            self.touched[name] = self.records_at(name)

    @staticmethod
    def _node_records(node: Node) -> list[tuple[int, bytes]]:
        out = [(t, rd) for t, rds in node.rrsets.items() for rd in rds]
        if node.cname is not None:
            out.append((wire.CNAME, node.cname))
        return out

    def records_at(self, name: bytes) -> tuple[bytes | None, Records]:
        """(zone, records) served at ``name`` apart from the SOA: what a transfer sends."""
        node = self.nodes.get(name)
        if node is not None:
            return node.zone, frozenset(self._node_records(node))
        first = name[0]
        if first and name[first + 1 :] == self.apex and name[1 : first + 1] in self.labels:
            return self.apex, frozenset((t, rd) for t, rds in self.gateway.items() for rd in rds)
        return None, frozenset()

    def soa_rdata(self) -> bytes:
        return self._soa_rdata()

    def snapshot(self, zone: bytes) -> ZoneContents:
        """What ``zone`` holds now but the SOA (take ``soa_rdata`` at the same time).

        The names are copied here (8 bytes a name, not their records), so a transfer
        streamed from this later still sends this serial while changes apply: nodes are
        replaced on change, never edited in place.
        """
        apex = self.apex
        nodes = [n for n in self.nodes.values() if n.zone == zone]
        nodes.sort(key=lambda n: n.name != zone)
        records = [(n.name, t, rd) for n in nodes for t, rd in self._node_records(n)]
        if zone != apex:
            return ZoneContents(records, [], [], set())
        gateway = [(t, rd) for t, rds in self.gateway.items() for rd in rds]
        with_node = {n.name[1 : n.name[0] + 1] for n in nodes
                     if n.name and n.name[n.name[0] + 1 :] == apex}
        return ZoneContents(records, self.sorted_labels().copy(), gateway, with_node)

    def sorted_labels(self) -> list[bytes]:
        if self.label_order is None:
            self.label_order = sorted(self.labels if self.as_loaded is None else self.as_loaded)
            self.as_loaded = None
        return self.label_order

    def contents(self, zone: bytes) -> Iterator[tuple[bytes, int, bytes]]:
        """Every (owner, type, rdata) of ``zone`` but the SOA, apex first."""
        snap = self.snapshot(zone)
        yield from snap.records
        for raw in snap.labels:
            if raw not in snap.with_node:
                name = bytes([len(raw)]) + raw + self.apex
                for t, rd in snap.gateway:
                    yield name, t, rd

    # ------------------------------------------------------------------ lookup and packing
    def find(self, q: bytes) -> Node:
        """The node answering ``q`` (lower wire): a real node, ENT, NX or OUTSIDE."""
        node = self.nodes.get(q)
        if node is not None:
            return node
        apex = self.apex
        first = q[0]
        if first and len(q) == first + 1 + len(apex) and q[first + 1 :] == apex:
            if q[1 : first + 1] in self.labels:
                return self.gateway_node
            return self._pseudo(ENT if q in self.ent else NX, apex)
        zone = self.zone_of(q)
        if zone is None:
            return self.outside
        return self._pseudo(ENT if q in self.ent else NX, zone)

    def _pseudo(self, kind: int, zone: bytes) -> Node:
        node = self.pseudo.get((kind, zone))
        if node is None:
            node = self.pseudo[(kind, zone)] = Node(b"", zone, kind)
        return node

    def answer(self, qname: bytes, qtype: int, ekey: int) -> Packed:
        """(header with ID 0 and RD clear, body after the question) for this query."""
        node = self.find(qname)
        if node.gen != self.gen:
            node.cache.clear()
            node.gen = self.gen
        key = (qtype, ekey)
        packed = node.cache.get(key)
        if packed is None:
            if ekey == wire.EDNS_DO and self.signer is not None:
                flags, rcode, an, ns, ar, denial = self._sections(node, qtype)
                packed = self.signer.answer(qname, flags, rcode, (an, ns, ar), denial)
                if not node.name:  # a shared node: the signed owner is the query name
                    return packed
            else:
                packed = self._pack(node, qtype, ekey)
            if len(node.cache) < 64:
                node.cache[key] = packed
        return packed

    def _soa_rdata(self) -> bytes:
        return wire.soa_rdata(
            self.mname, self.rname, self.serial, 3600, 600, 1209600, self.config.negative_ttl
        )

    def _rrsets(self, node: Node) -> Rrsets:
        if node.name and node.name == node.zone:
            return {**node.rrsets, wire.SOA: (self._soa_rdata(),)}
        return node.rrsets

    def _negative_soa(self, zone: bytes) -> RRset:
        return RRset(zone, wire.SOA, self.neg_ttl, (self._soa_rdata(),), zone)

    def _pack(self, node: Node, qtype: int, ekey: int) -> Packed:
        flags, rcode, an, ns, ar, _ = self._sections(node, qtype)
        return self._finish(flags, rcode, an, ns, ar, ekey)

    def _sections(self, node: Node, qtype: int) -> Sections:
        """The answer as RRsets (the owner ``QNAME`` is the query name), with what a
        negative answer must prove when it is signed."""
        if node.kind == OUTSIDE:
            return wire.QR, wire.REFUSED, [], [], [], None
        zone = node.zone
        if node.kind in (NX, ENT):
            denial = Denial(QNAME, zone, self.neg_ttl, None if node.kind == NX else ())
            rcode = wire.NXDOMAIN if node.kind == NX else wire.NOERROR
            return wire.QR_AA, rcode, [], [self._negative_soa(zone)], [], denial
        an: list[RRset] = []
        ns: list[RRset] = []
        ar: list[RRset] = []
        rcode = wire.NOERROR
        ttl = node.ttl or self.ttl
        if node.cname is not None:
            an.append(RRset(QNAME, wire.CNAME, ttl, (node.cname,), zone))
            if qtype in (wire.CNAME, wire.ANY):
                return wire.QR_AA, rcode, an, ns, ar, None
            target = self.find(node.cname)
            sets = self._rrsets(target) if target.kind == NODE else {}
            if qtype in sets:
                an.append(RRset(node.cname, qtype, ttl, sets[qtype], target.zone))
                return wire.QR_AA, rcode, an, ns, ar, None
            if target.kind not in (NODE, ENT, NX):
                return wire.QR_AA, rcode, an, ns, ar, None
            ns.append(self._negative_soa(target.zone))
            if target.kind == NX:
                rcode = wire.NXDOMAIN
            types = None if target.kind == NX else tuple(sets)
            return wire.QR_AA, rcode, an, ns, ar, Denial(node.cname, target.zone,
                                                          self.neg_ttl, types)
        sets = self._rrsets(node)
        rtype = qtype
        if qtype == wire.ANY:
            rtype = next((t for t in _ANY_ORDER if t in sets), 0)
        if rtype not in sets:
            ns.append(self._negative_soa(zone))
            return wire.QR_AA, rcode, an, ns, ar, Denial(QNAME, zone, self.neg_ttl, tuple(sets))
        an.append(RRset(QNAME, rtype, ttl, sets[rtype], zone))
        if rtype == wire.NS:
            for host in sets[rtype]:
                glue = self.glue.get(host, {})
                ar += [RRset(host, t, ttl, glue[t], self.apex) for t in (wire.A, wire.AAAA)
                       if t in glue]
        return wire.QR_AA, rcode, an, ns, ar, None

    @staticmethod
    def _finish(
        flags: int, rcode: int, an: list[RRset], ns: list[RRset], ar: list[RRset], ekey: int
    ) -> Packed:
        body = [wire.rr(s.owner, s.rtype, s.ttl, rd) for s in (*an, *ns, *ar) for rd in s.rdatas]
        counts = [sum(len(s.rdatas) for s in sec) for sec in (an, ns, ar)]
        if ekey:
            body.append(wire.opt_rr(ekey))
            counts[2] += 1
        hdr = wire.header(flags, rcode, 1, *counts)
        return hdr, b"".join(body)
