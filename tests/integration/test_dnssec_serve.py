"""DNSSEC on real sockets: the CLI's DS, dnsd's signed answers over UDP and TCP, fresh names."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import dns.asyncquery
import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.certd_harness import dns_target
from tests.dnssec_check import validate_section
from tests.gateway import cli, write_config
from tests.support import ZONE, make_config, services, store_rows
from webgateway import zonekeys
from webgateway.keyseal import SEALED, KeySeal
from webgateway.model import Name


def test_zone_ds_makes_the_key_once_and_prints_only_the_ds(tmp_path: Path) -> None:
    off = write_config(tmp_path)
    r = cli("zone", "ds", "--config", str(off))
    assert r.returncode == 1 and "dnssec.enabled is false" in r.stderr, r.stderr
    cfg = write_config(tmp_path, dnssec={"enabled": True})
    first = cli("zone", "ds", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    (line,) = first.stdout.splitlines()
    owner, _ttl, cls, rtype, tag, alg, digest_type, digest = line.split()
    assert (owner, cls, rtype, alg, digest_type) == (f"{ZONE}.", "IN", "DS", "13", "2")
    assert len(digest) == 64 and int(tag) < 65536
    assert "PRIVATE" not in first.stdout + first.stderr
    assert cli("zone", "ds", "--config", str(cfg)).stdout == first.stdout  # generated once
    db = tmp_path / "var" / "webgateway.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


async def _ask(host: str, port: int, name: str, rdtype: str, tcp: bool = False
               ) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=2)
    return await dns.asyncquery.udp(q, host, port=port, timeout=2)


def _check(m: dns.message.Message, keys: dict[dns.name.Name, dns.rrset.RRset]) -> int:
    return len(validate_section(m.answer, keys)) + len(validate_section(m.authority, keys))


async def test_dnsd_serves_signed_answers_and_signs_new_names_at_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, dnssec={"enabled": True})
    host, port = dns_target(cfg)
    async with services(cfg, "dnsd") as run:
        m = await _ask(host, port, ZONE, "DNSKEY", tcp=True)
        apex = dns.name.from_text(ZONE)
        keyset = m.find_rrset(m.answer, apex, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        keys = {apex: keyset}
        stored = zonekeys.load(await run.store.get_meta(zonekeys.META_KEY) or "")
        assert {k.key for k in keyset} == {k.dnskey[4:] for k in stored}
        assert _check(m, keys) == 1
        for name, rdtype, tcp in [(ZONE, "SOA", False), (f"nx.{ZONE}", "A", False),
                                  (ZONE, "NS", True), (ZONE, "TXT", True)]:
            assert _check(await _ask(host, port, name, rdtype, tcp), keys) >= 1
        t0 = time.monotonic()
        owner = await run.store.create_owner("alice", "h" * 64)
        await run.store.put_name(Name("fresh", owner.id, ()), 100)
        while True:
            m = await _ask(host, port, f"fresh.{ZONE}", "A")
            if m.answer or time.monotonic() - t0 > 5:
                break
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        assert m.answer and _check(m, keys) == 1
        assert elapsed < 1.0, elapsed
        plain = await dns.asyncquery.udp(dns.message.make_query(f"fresh.{ZONE}", "A"), host,
                                         port=port, timeout=2)
        assert len(plain.answer) == 1 and not plain.authority  # DO=0: no DNSSEC records


async def _keys_served(host: str, port: int, want: int) -> dns.rrset.RRset:
    """The DNSKEY RRset once it holds ``want`` keys (the feed delivers within a second)."""
    apex = dns.name.from_text(ZONE)
    deadline = time.monotonic() + 3
    while True:
        m = await _ask(host, port, ZONE, "DNSKEY", tcp=True)
        keyset = m.find_rrset(m.answer, apex, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        if len(keyset) == want or time.monotonic() > deadline:
            return keyset
        await asyncio.sleep(0.02)


async def _cds_tags(host: str, port: int) -> set[int]:
    m = await _ask(host, port, ZONE, "CDS", tcp=True)
    return {rd.key_tag for rr in m.answer if rr.rdtype == dns.rdatatype.CDS for rd in rr}


async def test_a_key_rollover_by_command_on_real_sockets(tmp_path: Path,
                                                         store_section: dict[str, object]
                                                         ) -> None:
    """`zone rollover` publishes a second key that signs beside the first, the phases move
    on (here by a clock run ahead) and the old key leaves; every answer on the way
    validates with each key in the zone."""
    from webgateway import keyroll

    sections: dict[str, dict[str, object]] = {"dnssec": {"enabled": True},
                                              "store": store_section}
    path = write_config(tmp_path, **sections)
    cfg = make_config(tmp_path, **sections)
    host, port = dns_target(cfg)
    apex = dns.name.from_text(ZONE)
    timing = keyroll.Timing.from_config(cfg)
    seal = KeySeal(cfg.store.key)
    async with services(cfg, "dnsd") as run:
        (old,) = zonekeys.load(await run.store.get_meta(zonekeys.META_KEY) or "")
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path))
        assert r.returncode == 0, r.stderr
        assert "Ipub = Dprp + max(TTLkey, TTLsig) = 65m" in r.stdout, r.stdout
        assert f"{old.tag:<6} active" in r.stdout
        assert "becomes ready for its DS" in r.stdout
        keyset = await _keys_served(host, port, 2)
        assert len(keyset) == 2 and old.dnskey[4:] in {k.key for k in keyset}
        (new,) = [k for k in keyset if k.key != old.dnskey[4:]]
        for m in [await _ask(host, port, ZONE, "SOA"), await _ask(host, port, f"nx.{ZONE}", "A")]:
            for key in keyset:  # either key alone validates every RRset
                one = dns.rrset.from_rdata(apex, keyset.ttl, key)
                assert _check(m, {apex: one}) >= 1
        assert await _cds_tags(host, port) == {old.tag}
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path), "--ds-seen")
        assert r.returncode == 1 and "not ready yet" in r.stderr, r.stderr
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path))
        assert r.returncode == 1 and "already under way" in r.stderr, r.stderr

        later = time.time() + timing.ipub + 1
        await keyroll.advance_stored(run.store, seal, timing, clock=lambda: later)
        deadline = time.monotonic() + 3
        while await _cds_tags(host, port) != {dns.dnssec.key_id(new)}:
            assert time.monotonic() < deadline, "CDS never named the new key"
            await asyncio.sleep(0.02)
        ds = await asyncio.to_thread(cli, "zone", "ds", "--config", str(path))
        assert ds.stdout.split()[4] == str(dns.dnssec.key_id(new)), ds.stdout
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path), "--ds-seen")
        assert r.returncode == 0 and f"key(s) {old.tag} retire at" in r.stdout, r.stdout

        later = time.time() + timing.iret_ds + 1
        await keyroll.advance_stored(run.store, seal, timing, clock=lambda: later)
        keyset = await _keys_served(host, port, 1)
        assert [k.key for k in keyset] == [new.key]
        m = await _ask(host, port, ZONE, "SOA")
        assert _check(m, {apex: keyset}) == 1
        assert sum(len(rr) for rr in m.answer if rr.rdtype == dns.rdatatype.RRSIG) == 1
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path), "--status")
        assert f"{old.tag:<6} retired" in r.stdout and "no rollover under way" in r.stdout


async def test_dnsd_moves_the_rollover_on_by_itself(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """dnsd's own tick takes a phase when it is due: with 1 s TTLs and no propagation delay
    the successor is ready (named by CDS) about a second after `zone rollover`."""
    import dnsd.service

    monkeypatch.setattr(dnsd.service, "ROLL_INTERVAL", 0.05)
    sections: dict[str, dict[str, object]] = {
        "zone": {"ttl": 1, "negative_ttl": 1},
        "dnssec": {"enabled": True, "propagation_delay": 0}}
    path = write_config(tmp_path, **sections)
    cfg = make_config(tmp_path, **sections)
    host, port = dns_target(cfg)
    async with services(cfg, "dnsd") as run:
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path))
        assert r.returncode == 0, r.stderr
        keyset = await _keys_served(host, port, 2)
        assert len(keyset) == 2
        before = await _cds_tags(host, port)
        t0 = time.monotonic()
        while await _cds_tags(host, port) == before:
            assert time.monotonic() - t0 < 5, "dnsd never made the successor ready"
            await asyncio.sleep(0.05)
        _old, new = zonekeys.load(await run.store.get_meta(zonekeys.META_KEY) or "")
        assert new.published is not None and new.ready is not None
        assert new.published + 1 <= new.ready < new.published + 3  # Ipub = 0 + max(1, 1)
        r = await asyncio.to_thread(cli, "zone", "rollover", "--config", str(path), "--status")
        assert " ready " in r.stdout and "give the parent the DS" in r.stdout, r.stdout


async def test_two_gateways_due_for_a_scheduled_roll_start_one(tmp_path: Path,
                                                               store_section: dict[str, object]
                                                               ) -> None:
    """Two gateways' ticks on one store, both past csk_lifetime at once: the compare-and-swap
    lets one new key land; the other finds the roll under way and adds nothing."""
    from dataclasses import replace

    from webgateway import keyroll
    from webgateway.storefactory import open_store

    cfg = make_config(tmp_path, dnssec={"enabled": True, "csk_lifetime": "30d"},
                      store=store_section)
    timing = keyroll.Timing.from_config(cfg)
    seal = KeySeal(cfg.store.key)
    a, b = await open_store(cfg.store), await open_store(cfg.store)
    try:
        firsts = await asyncio.gather(zonekeys.ensure(a, seal), zonekeys.ensure(b, seal))
        assert [[k.tag for k in f] for f in firsts] == [[firsts[0][0].tag]] * 2
        (first,) = firsts[0]
        due = (first.active or 0) + timing.lifetime + 1
        results = await asyncio.gather(
            *[keyroll.advance_stored(s, seal, timing, clock=lambda: due) for s in (a, b) * 3])
        stored = zonekeys.load(await a.get_meta(zonekeys.META_KEY) or "")
        assert len(stored) == 2 and stored[0].tag == first.tag
        assert all([replace(k, private=None) for k in r] ==
                   [replace(k, private=None) for k in stored] for r in results)
        assert await b.swap_meta(zonekeys.META_KEY, "stale", "x") is False
        assert zonekeys.load(await b.get_meta(zonekeys.META_KEY) or "")[1].tag == stored[1].tag
        # exactly one sealed private key per stored key: the losers deleted theirs
        rows = await store_rows(a, "SELECT name FROM secrets WHERE name LIKE 'dnssec:%'")
        assert sorted(r[0] for r in rows) == sorted(zonekeys.secret_name(k) for k in stored)
        for k in stored:
            private = await zonekeys.open_private(b, seal, k)
            assert zonekeys.ZoneKey.from_private(private, k.created).dnskey == k.dnskey
    finally:
        await a.close()
        await b.close()


async def test_with_secondaries_the_serial_moves_for_fresh_signatures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secondaries keep a transfer's RRSIGs until the serial moves: dnsd writes
    dnssec.resigned (once per signature_refresh / 2, not every tick)."""
    import dnsd.service
    from tests.secondaries import TSIG

    monkeypatch.setattr(dnsd.service, "ROLL_INTERVAL", 0.05)
    cfg = make_config(tmp_path, dnssec={"enabled": True},
                      dns={"secondaries": ["127.0.0.1:9"], "tsig": TSIG})
    async with services(cfg, "dnsd") as run:
        serial = await run.store.serial()
        deadline = time.monotonic() + 5
        while (stamp := await run.store.get_meta(zonekeys.RESIGNED_META)) is None:
            assert time.monotonic() < deadline, "dnsd never marked a re-signing"
            await asyncio.sleep(0.05)
        assert abs(float(stamp) - time.time()) < 5
        moved = await run.store.serial()
        assert moved > serial
        await asyncio.sleep(0.3)  # several more ticks: nothing due
        assert await run.store.get_meta(zonekeys.RESIGNED_META) == stamp
        assert await run.store.serial() == moved


async def test_plaintext_keys_in_meta_are_sealed_at_first_start(
        tmp_path: Path, store_section: dict[str, object],
        caplog: pytest.LogCaptureFixture) -> None:
    """A store written before sealing holds the CSK's PEM in meta, so in every snapshot:
    the first start moves it into a sealed secrets row and out of meta, and dnsd signs
    with it. Another key file, or the row copied to another key's slot, does not open it;
    no error, log line or repr carries the key."""
    import json
    import logging
    from dataclasses import replace

    from cryptography.hazmat.primitives import serialization

    from webgateway.storefactory import open_store

    key_file = tmp_path / "store.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    cfg = make_config(tmp_path, dnssec={"enabled": True},
                      store={**store_section, "key_file": str(key_file)})
    legacy = zonekeys.first_key()
    assert legacy.private is not None
    pem = legacy.private.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode("ascii")
    body = pem.splitlines()[1]
    store = await open_store(cfg.store)
    try:  # as the build before sealing stored it (no phases either: before rollovers)
        await store.set_meta(zonekeys.META_KEY, json.dumps(
            {"keys": [{"algorithm": 13, "created": legacy.created, "private_key": pem}]}))
    finally:
        await store.close()
    host, port = dns_target(cfg)
    caplog.set_level(logging.DEBUG)
    async with services(cfg, "dnsd") as run:
        assert "moved 1 private key(s) out of store meta" in caplog.text
        text = await run.store.get_meta(zonekeys.META_KEY) or ""
        snap = await run.store.snapshot()
        assert "PRIVATE" not in text and body not in json.dumps(snap.meta)
        (moved,) = zonekeys.load(text)
        assert moved.dnskey == legacy.dnskey and moved.private is None
        sealed = await run.store.get_secret(zonekeys.secret_name(legacy))
        assert sealed is not None and sealed.startswith(SEALED) and body not in sealed
        m = await _ask(host, port, ZONE, "DNSKEY", tcp=True)
        apex = dns.name.from_text(ZONE)
        keyset = m.find_rrset(m.answer, apex, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        assert [k.key for k in keyset] == [legacy.dnskey[4:]]
        assert _check(await _ask(host, port, ZONE, "SOA"), {apex: keyset}) == 1

        other = zonekeys.generate()
        await run.store.put_secret_once(zonekeys.secret_name(other), sealed)
        for seal, k in [(KeySeal(os.urandom(32)), legacy), (KeySeal(), legacy),
                        (KeySeal(cfg.store.key), other)]:
            with pytest.raises(zonekeys.KeyMaterialError) as e:
                await zonekeys.open_private(run.store, seal, k)
            assert body not in str(e.value) and "PRIVATE" not in str(e.value)
        assert body not in repr(replace(moved, private=legacy.private))
        assert str(legacy.private.private_numbers().private_value) not in repr(legacy)
    assert body not in caplog.text
    r = cli("zone", "rollover", "--status", "--config",
            str(write_config(tmp_path, dnssec={"enabled": True},
                             store={**store_section, "key_file": str(key_file)})))
    assert r.returncode == 0 and body not in r.stdout + r.stderr, r.stderr
