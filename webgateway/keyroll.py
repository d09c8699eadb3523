"""CSK rollover by the RFC 7583 timings: a pure state machine over the stored key list.

The roll is the double-signature CSK roll (RFC 7583 3.3, RFC 6781 4.1.1.2 and 4.1.2, as
Knot's automatic CSK roll does it). With one key of one algorithm there is no ZSK to
pre-publish, and signing online costs nothing ahead, so the successor signs from the moment
it is published; the only slow party is the parent:

1. **published** (Tpub): the successor joins the DNSKEY RRset and signs every RRset beside
   the old key. Resolvers holding the old DS validate with the old key's signatures.
2. **ready** (Trdy = Tpub + Ipub, Ipub = Dprp + max(TTLkey, TTLsig)): every cached DNSKEY
   RRset holds the successor and every cached RRset carries its signature, so CDS/CDNSKEY
   and ``zone ds`` now name it: the parent may replace the DS.
3. **ds_seen** (Tds): the parent serves the successor's DS (``zone rollover --ds-seen``
   confirms it; ``--poll-parent`` asks the parent's servers).
4. **retired** (Tret = Tds + DprpP + TTLds): no resolver can still hold only the old DS, so
   the old key leaves the DNSKEY RRset and stops signing, at once (nothing cached needs it).
5. **removed** (Trem = Tret + Dprp + max(TTLkey, TTLsig)): its private key is deleted.

Every phase is a function of the stored phases and the clock, so any gateway's dnsd may
move it on (``advance_stored``); the write is a compare-and-swap on the store's meta value,
so two gateways racing make one change, and a repeated tick changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from webgateway.config import Config, human_duration
from webgateway.keyseal import KeySeal
from webgateway.store import Store
from webgateway.zonekeys import (
    META_KEY,
    ZoneKey,
    dump,
    generate,
    in_zone,
    load,
    seal_private,
    secret_name,
)

#: Removed keys kept in the list (without their private key) for ``--status``.
KEEP_REMOVED = 2


class RolloverError(ValueError):
    """A rollover command that does not fit the current phase; the text says why."""


@dataclass(frozen=True)
class Timing:
    """The RFC 7583 parameters, in seconds."""

    propagation: float  # Dprp: a change reaching every one of our name servers
    ttl_key: float  # TTLkey: the DNSKEY RRset's TTL
    ttl_sig: float  # TTLsig: the largest TTL of signed data (RRSIGs share their RRset's)
    parent_propagation: float  # DprpP: a DS change reaching every parent server
    ttl_ds: float  # TTLds: the parent's DS TTL
    lifetime: float = 0.0  # a key's active life before a scheduled roll; 0: by command

    @classmethod
    def from_config(cls, config: Config) -> Timing:
        d = config.dnssec
        ttl = float(config.zone.ttl)
        return cls(d.propagation_delay, ttl, max(ttl, float(config.zone.negative_ttl)),
                   d.parent_propagation_delay, d.parent_ds_ttl, d.csk_lifetime)

    @property
    def ipub(self) -> float:
        """Publication interval: successor published to ready for its DS."""
        return self.propagation + max(self.ttl_key, self.ttl_sig)

    @property
    def iret_ds(self) -> float:
        """From the DS seen at the parent to the old key's retirement."""
        return self.parent_propagation + self.ttl_ds

    @property
    def iret(self) -> float:
        """From retirement to removal (nothing cached can name the old key after it)."""
        return self.propagation + max(self.ttl_key, self.ttl_sig)


def rolling(keys: list[ZoneKey]) -> tuple[list[ZoneKey], ZoneKey] | None:
    """(old keys, successor) while a roll is under way."""
    live = in_zone(keys)
    if len(live) < 2:
        return None
    new = max(reversed(live), key=lambda k: k.published or 0.0)  # a tie: the later one
    return [k for k in live if k is not new], new


def start(keys: list[ZoneKey], now: float, successor: ZoneKey) -> list[ZoneKey]:
    """Publish ``successor`` beside the current key; it signs from now on."""
    if rolling(keys) is not None:
        raise RolloverError("a rollover is already under way (see `zone rollover --status`)")
    return [*keys, replace(successor, published=now, active=now)]


def confirm_ds(keys: list[ZoneKey], now: float) -> list[ZoneKey]:
    """The parent serves the successor's DS (or, with no roll, the one key's DS)."""
    roll = rolling(keys)
    if roll is None:
        live = in_zone(keys)
        return [replace(k, ds_seen=now) if k is live[0] and k.ds_seen is None else k
                for k in keys]
    _, new = roll
    if new.ready is None:
        raise RolloverError(
            f"key {new.tag} is not ready yet: its DS must not be at the parent before every"
            " resolver's cached DNSKEY set holds the key (see `zone rollover --status`)")
    if new.ds_seen is not None:
        return keys
    return [replace(k, ds_seen=now) if k is new else k for k in keys]


def advance(keys: list[ZoneKey], now: float, timing: Timing,
            make_key: Callable[[float], ZoneKey] = generate) -> list[ZoneKey]:
    """The key list with every phase due by ``now`` taken (the same list when none is)."""
    out = list(keys)
    roll = rolling(out)
    if roll is None:
        live = in_zone(out)
        if timing.lifetime and live and now >= (live[0].active or live[0].created) + (
                timing.lifetime):
            out = start(out, now, make_key(now))
    else:
        old, new = roll
        if new.ready is None and now >= (new.published or now) + timing.ipub:
            out = [replace(k, ready=now) if k is new else k for k in out]
        elif new.ds_seen is not None and now >= new.ds_seen + timing.iret_ds:
            out = [replace(k, retired=now) if k in old else k for k in out]
    out = [replace(k, removed=now, private=None)
           if k.retired is not None and k.removed is None and now >= k.retired + timing.iret
           else k for k in out]
    gone = [k for k in out if k.removed is not None]
    for k in sorted(gone, key=lambda k: k.removed or 0.0)[:-KEEP_REMOVED]:
        out.remove(k)
    return out if out != keys else keys


async def change_stored(store: Store, seal: KeySeal,
                        change: Callable[[list[ZoneKey]], list[ZoneKey]],
                        attempts: int = 5) -> list[ZoneKey]:
    """Apply ``change`` to the stored keys with a compare-and-swap, retried when another
    gateway wrote in between; the keys as stored after it.

    A key ``change`` generates is sealed into its secrets row before the swap names it;
    when the swap loses (another gateway rolled first) that row is deleted, so exactly one
    successor exists. A removed key's row goes once the swap that removes it lands."""
    for _ in range(attempts):
        text = await store.get_meta(META_KEY)
        if text is None:
            raise RolloverError("the zone has no key yet: start dnsd with [dnssec] enabled"
                                " (or run `webgateway zone ds`) first")
        keys = load(text)
        new = change(keys)
        if new is keys:
            return new
        before = {secret_name(k) for k in keys}
        made = [k for k in new if k.private is not None and secret_name(k) not in before]
        for k in new:
            if k.private is not None:
                await seal_private(store, seal, k)
        if await store.swap_meta(META_KEY, text, dump(new)):
            live = {secret_name(k) for k in new if k.removed is None}
            for name in before - live:
                await store.delete_secret(name)
            return [replace(k, private=None) for k in new]
        for k in made:
            await store.delete_secret(secret_name(k))
    raise RolloverError("the key list kept changing under this command; run it again")


async def advance_stored(store: Store, seal: KeySeal, timing: Timing,
                         clock: Callable[[], float] = time.time) -> list[ZoneKey]:
    """One tick of the roll: what dnsd runs every minute on every gateway."""
    return await change_stored(store, seal, lambda keys: advance(keys, clock(), timing))


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def state(k: ZoneKey, keys: list[ZoneKey]) -> str:
    """A key's phase in words: a successor's last phase, else active/retired/removed."""
    if k.removed is not None:
        return "removed"
    if k.retired is not None:
        return "retired"
    roll = rolling(keys)
    if roll is not None and roll[1] is k:
        return "ds-seen" if k.ds_seen else "ready" if k.ready else "published"
    return "retiring" if roll is not None and roll[1].ds_seen else "active"


def status_lines(keys: list[ZoneKey], now: float, timing: Timing) -> list[str]:
    """What ``zone rollover --status`` prints: the timings, each key's phases, what is next."""
    h = human_duration
    out = [
        f"timings (RFC 7583): Dprp={h(timing.propagation)} TTLkey={h(timing.ttl_key)}"
        f" TTLsig={h(timing.ttl_sig)} DprpP={h(timing.parent_propagation)}"
        f" TTLds={h(timing.ttl_ds)}",
        f"  Ipub = Dprp + max(TTLkey, TTLsig) = {h(timing.ipub)};"
        f" Iret(DS) = DprpP + TTLds = {h(timing.iret_ds)};"
        f" Iret = Dprp + max(TTLkey, TTLsig) = {h(timing.iret)}",
        f"  csk_lifetime = {h(timing.lifetime) if timing.lifetime else '0 (by command)'}",
        "key    state      published            ready                ds_seen"
        "              retired              removed",
    ]
    for k in keys:
        out.append(f"{k.tag:<6} {state(k, keys):<10} " + " ".join(
            f"{_when(getattr(k, p)):<20}" for p in ("published", "ready", "ds_seen", "retired",
                                                     "removed")).rstrip())
    out.append("next: " + next_step(keys, now, timing))
    return out


def next_step(keys: list[ZoneKey], now: float, timing: Timing) -> str:
    roll = rolling(keys)
    if roll is None:
        live = in_zone(keys)
        if timing.lifetime and live:
            due = (live[0].active or live[0].created) + timing.lifetime
            return f"a scheduled rollover starts at {_when(due)} UTC"
        return "no rollover under way; `webgateway zone rollover` starts one"
    old, new = roll
    if new.ready is None:
        due = (new.published or now) + timing.ipub
        return (f"key {new.tag} becomes ready for its DS at {_when(due)} UTC (Ipub after"
                " publication); do not give its DS to the parent before")
    if new.ds_seen is None:
        return (f"give the parent the DS of key {new.tag} (`webgateway zone ds`; CDS names it"
                " too), then run `webgateway zone rollover --ds-seen` (or --poll-parent)")
    due = new.ds_seen + timing.iret_ds
    return (f"key(s) {', '.join(str(k.tag) for k in old)} retire at {_when(due)} UTC"
            " (DprpP + TTLds after the DS was seen)")
