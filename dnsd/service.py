"""The asyncio shell around the responder: UDP and TCP listeners and the store follower.

UDP: one datagram in, at most one out. TCP (RFC 7766): two-octet length framing, any
number of pipelined queries per connection answered in order, an idle timeout, a cap on
open connections, and reading paused while the client does not read its answers. A zone
transfer on TCP is streamed message by message, waiting while the client's window is
full and yielding to the loop between messages, so answers keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dnsd import mmsg, rrl, transfer
from dnsd.journal import Journal
from dnsd.notify import NotifySchedule, NotifySender
from dnsd.responder import QTYPE_NAMES, RCODES, TRUNCATED, Responder, slip
from dnsd.tsig import Signer
from dnsd.zone import ZoneView
from webgateway import keyroll, zonekeys
from webgateway.addresses import HostPort
from webgateway.config import Config, ConfigError
from webgateway.feed import Follower
from webgateway.keyseal import KeySeal
from webgateway.listen import bind
from webgateway.model import NameLoad, acme_account_meta_key
from webgateway.store import Store, StoreError
from webgateway.tasks import stop_task
from webgateway.workerpool import WorkerPool, pooled_registry

log = logging.getLogger(__name__)

_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
                5: "REFUSED", 9: "NOTAUTH", 16: "BADVERS"}


class UdpListener:
    """Reads the socket directly from a reader callback, up to ``BATCH`` datagrams a wake-up.

    Cheaper than a DatagramProtocol per packet (no transport layer), which matters at
    100k queries/s. On Linux a wake-up is one ``recvmmsg`` and one ``sendmmsg``
    (``dnsd.mmsg``); elsewhere one call per datagram, the replies still sent back to back
    after all are answered. A reply that would block is dropped: the client retries, as
    with loss.
    """

    BATCH = 64

    def __init__(
        self, sock: socket.socket, responder: Responder, limiter: rrl.RateLimiter | None = None
    ) -> None:
        self.sock = sock
        self.responder = responder
        self.limiter = limiter
        self.send_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch = mmsg.BatchSocket(sock, self.BATCH) if mmsg.available() else None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(),
                              self._readable if self._batch is None else self._readable_batch)

    def _limited(self, data: bytes, host: str, now: float) -> bytes | None:
        """None when the rate limit lets the query through, else what it gets instead
        (a TC=1 reply, or b"" for nothing)."""
        verdict = self.limiter.check(host, now) if self.limiter is not None else rrl.ANSWER
        if verdict == rrl.ANSWER:
            return None
        return (slip(data) or b"") if verdict == rrl.SLIP else b""

    def _handle(self, data: bytes) -> bytes | None:
        try:
            return self.responder.handle(data)
        except Exception:
            log.exception("query handling failed")  # a bug: keep serving the others
            return None

    def _readable_batch(self) -> None:
        batch = self._batch
        assert batch is not None
        limiter = self.limiter
        now = time.monotonic() if limiter is not None else 0.0
        handle = self._handle
        out: list[tuple[int, bytes]] = []
        for data, slot in batch.recv():
            if limiter is not None:
                instead = self._limited(data, batch.host(slot), now)
                if instead is not None:
                    if instead:
                        out.append((slot, instead))
                    continue
            resp = handle(data)
            if resp is not None:
                out.append((slot, resp))
        if out:
            self.send_dropped += batch.send(out)

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        limiter = self.limiter
        now = time.monotonic() if limiter is not None else 0.0
        out: list[tuple[bytes, Any]] = []
        for _ in range(self.BATCH):
            try:
                data, addr = recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP errors surfacing on the socket
                log.debug("udp receive error: %s", e)
                continue
            resp = self._limited(data, addr[0], now) if limiter is not None else None
            if resp is None:
                resp = self._handle(data)
            if resp:
                out.append((resp, addr))
        send = self.sock.sendto
        for resp, addr in out:
            try:
                send(resp, addr)
            except OSError:
                self.send_dropped += 1

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()


class TcpProtocol(asyncio.Protocol):
    def __init__(self, server: DnsService) -> None:
        self.server = server
        self.responder = server.responder
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.tcp_conns) >= self.server.config.dns.max_tcp_connections:
            self.server.tcp_refused += 1
            self.transport.close()  # FIN, not RST: the client sees a clean end of stream
            return
        self.server.tcp_conns.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.server.config.dns.tcp_idle_timeout, self._timeout)

    def _timeout(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.streaming is not None:  # answered in order, after the transfer
            if len(self.buf) > 2 * transfer.MESSAGE_SIZE and self.transport is not None:
                self.transport.pause_reading()
            return
        self._process()

    def _process(self) -> None:
        out: list[bytes] = []
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            size = buf[pos] << 8 | buf[pos + 1]
            if len(buf) - pos - 2 < size:
                break
            msg = bytes(buf[pos + 2 : pos + 2 + size])
            pos += 2 + size
            if self.server.transfers is not None and transfer.is_transfer(msg):
                del buf[:pos]
                self._stream(msg, out)
                return
            try:
                resp = self.responder.handle(msg, tcp=True)
            except Exception:
                log.exception("query handling failed")
                resp = None
            if resp is None:  # not even a header: nothing sensible to say on this stream
                self._close_after(out)
                return
            out.append(len(resp).to_bytes(2, "big") + resp)
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        self._arm()

    def _stream(self, msg: bytes, out: list[bytes]) -> None:
        if self.transport is None:
            return
        if out:
            self.transport.write(b"".join(out))
        if self.idle is not None:
            self.idle.cancel()
        self.streaming = asyncio.create_task(self._send_transfer(msg))

    async def _send_transfer(self, msg: bytes) -> None:
        transfers = self.server.transfers
        assert transfers is not None and self.transport is not None
        peer = self.transport.get_extra_info("peername")
        timeout = self.server.config.dns.tcp_idle_timeout
        try:
            for reply in transfers.respond(msg, ipaddress.ip_address(peer[0]), int(time.time())):
                if self.transport is None or self.transport.is_closing():
                    return
                self.transport.write(len(reply).to_bytes(2, "big") + reply)
                if self.paused:
                    await asyncio.wait_for(self.writable.wait(), timeout)
                await asyncio.sleep(0)  # one message at a time: queries go between
        except TimeoutError:
            log.info("transfer to %s stopped: the client stopped reading", peer[0])
            if self.transport is not None:
                self.transport.abort()
            return
        except Exception:
            log.exception("zone transfer failed")
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            self.streaming = None
        if self.transport is not None:
            if not self.paused:
                self.transport.resume_reading()
            self._process()

    def _close_after(self, out: list[bytes]) -> None:
        if self.transport is not None:
            if out:
                self.transport.write(b"".join(out))
            self.transport.close()

    def pause_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.writable.clear()
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.writable.set()
            if self.streaming is None:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.streaming is not None:
            self.streaming.cancel()
        self.server.tcp_conns.discard(self)
        self.transport = None


class _Metrics(Collector):
    """Reads the plain counters of the responder at scrape time (no lock on the hot path)."""

    def __init__(self, service: DnsService) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.service
        r = s.responder
        q = CounterMetricFamily("webgateway_dns_queries", "DNS queries answered, by rcode and"
                                " query type (unlisted types: other; no question: none)",
                                labels=["rcode", "qtype"])
        merged: dict[int, int] = {}
        for i, n in enumerate(r.counts):
            if n:
                key = i % TRUNCATED
                merged[key] = merged.get(key, 0) + n
        for key, n in sorted(merged.items()):
            slot, code = divmod(key, RCODES)
            q.add_metric([_RCODE_NAMES.get(code, str(code)), QTYPE_NAMES[slot]], n)
        yield q
        yield CounterMetricFamily("webgateway_dns_truncated", "UDP responses sent truncated"
                                  " (TC=1: the client retries over TCP)", value=r.truncated())
        d = CounterMetricFamily("webgateway_dns_dropped", "DNS messages given no reply, by"
                                " reason", labels=["reason"])
        d.add_metric(["not_a_query"], r.dropped)
        d.add_metric(["send_failed"], sum(u.send_dropped for u in s._udp))
        if s.limiter is not None:
            d.add_metric(["rate_limited"], s.limiter.limited - s.limiter.slipped)
        yield d
        if s.limiter is not None:
            yield CounterMetricFamily("webgateway_dns_rrl_slipped", "UDP queries over the rate"
                                      " limit answered TC=1 instead", value=s.limiter.slipped)
        yield CounterMetricFamily("webgateway_dns_slow_path",
                                  "Queries that took the guarded parser", value=r.slow)
        yield CounterMetricFamily("webgateway_dns_cache_hits",
                                  "UDP queries answered from the reply cache", value=r.hits)
        yield CounterMetricFamily("webgateway_dns_tcp_refused",
                                  "TCP connections closed at once: over max_tcp_connections",
                                  value=s.tcp_refused)
        yield GaugeMetricFamily("webgateway_dns_tcp_connections", "Open TCP connections",
                                value=len(s.tcp_conns))
        yield GaugeMetricFamily("webgateway_dns_zone_serial", "Serial served in the SOA",
                                value=s.view.serial)
        st = s.transfers.stats
        t = CounterMetricFamily("webgateway_dns_transfers", "Zone transfer requests (AXFR, "
                                "IXFR), by outcome", labels=["outcome"])
        for name, value in (("axfr", st.axfr), ("ixfr", st.ixfr),
                            ("ixfr_fallback_axfr", st.ixfr_fallback),
                            ("refused", st.refused), ("tsig_error", st.tsig_errors)):
            t.add_metric([name], value)
        yield t
        if s.notifier is not None:
            yield CounterMetricFamily("webgateway_dns_notify_sent", "NOTIFY messages sent to "
                                      "secondaries", value=s.notifier.sent)
            yield CounterMetricFamily("webgateway_dns_notify_acked", "NOTIFY messages "
                                      "acknowledged with a valid signature",
                                      value=s.notifier.acked)

UDP_RCVBUF = 4 * 1024 * 1024
RESIGN_INTERVAL = 3600.0
ROLL_INTERVAL = 60.0  # how late a rollover phase may be taken (the timings are hours)


class DnsService:
    name = "dnsd"

    def __init__(
        self, config: Config, store: Store, registry: CollectorRegistry, *, worker: bool = False
    ) -> None:
        """``worker``: one of the pool's processes (shares the ports, starts no pool, and
        leaves sending NOTIFY to the secondaries to the parent)."""
        notify = not worker
        self.worker = worker
        self.config = config
        self.reuse_port = worker or config.dns.workers > 1
        self.pool = WorkerPool("dnsd", "dns.workers", "dnsd.service:worker",
                               0 if worker else config.dns.workers - 1)
        self.store = store
        account_key = acme_account_meta_key(config.acme.directory) if config.acme else None
        self.view = ZoneView(config.zone, account_key, config.dnssec)
        self.journal = Journal(self.view)
        self.responder = Responder(self.view)
        self.seal = KeySeal(config.store.key)
        self.follower = Follower(store, self.journal, max_wait=1.0, names_as=NameLoad.LABELS,
                                 prepare=self._open_keys)
        tsig = config.dns.tsig
        signer = Signer(tsig) if tsig is not None else None
        self.transfers = transfer.Transfers(self.journal, signer, config.dns.transfer_acl(),
                                            self.responder.handle)
        xfr = self.transfers
        self.responder.special = lambda d, scan, tcp: xfr.signed_or_udp(d, scan, tcp,
                                                                         int(time.time()))
        self.notifier: NotifySender | None = None
        if notify and signer is not None and config.dns.secondaries:
            sources: dict[int, str] = {a.host.version: str(a.host)
                                       for a in reversed(config.dns.listen)
                       if not a.host.is_unspecified}
            self.notifier = NotifySender(config.zone.name, NotifySchedule(config.dns.secondaries),
                                         signer, sources)
        self.tcp_conns: set[TcpProtocol] = set()
        self.tcp_refused = 0
        self.limiter: rrl.RateLimiter | None = None
        self._udp: list[UdpListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._task: asyncio.Task[None] | None = None
        self.bound: list[tuple[HostPort, int]] = []  # (address, actual port)
        pooled_registry(registry, self.pool).register(_Metrics(self))

    async def start(self) -> None:
        if self.view.dnssec is not None:
            await zonekeys.ensure(self.store, self.seal)  # before the first load: signed at once
        await self.follower.load()
        if self.config.dns.tsig is not None:
            self.view.sorted_labels()  # before serving: the first AXFR must not stall answers
        loop = asyncio.get_running_loop()
        socks: list[tuple[socket.socket, socket.socket]] = []
        try:
            for addr in self.config.dns.listen:
                # Bursts of a flood must not crowd honest queries out of the UDP socket
                # buffer (the kernel caps it at net.core.rmem_max).
                udp = bind("dns.listen", addr, socket.SOCK_DGRAM, reuse_port=self.reuse_port,
                           rcvbuf=UDP_RCVBUF)
                port = udp.getsockname()[1]
                try:
                    tcp = bind("dns.listen", HostPort(addr.host, port), reuse_port=self.reuse_port)
                except ConfigError:
                    udp.close()
                    raise
                socks.append((udp, tcp))
                self.bound.append((addr, port))
        except ConfigError:
            for u, t in socks:
                u.close()
                t.close()
            raise
        dns = self.config.dns
        limiter = (rrl.RateLimiter(dns.rrl_responses_per_second, dns.rrl_slip, dns.rrl_table_size)
                   if dns.rrl_responses_per_second else None)
        self.limiter = limiter
        for udp, tcp in socks:
            listener = UdpListener(udp, self.responder, limiter)
            listener.start()
            self._udp.append(listener)
            tcp.listen(1024)
            server = await loop.create_server(lambda: TcpProtocol(self), sock=tcp)
            self._servers.append(server)
        if self.notifier is not None:
            await self.notifier.start()
            self.notifier.changed(self.view.serial)  # a restart may have missed changes
        self._task = asyncio.create_task(self._follow(), name="dnsd-follower")
        listen = tuple(HostPort(a.host, p) for a, p in self.bound)
        try:
            await self.pool.start(replace(self.config,
                                          dns=replace(self.config.dns, listen=listen)))
        except ConfigError:
            await self.stop()
            raise
        log.info("dnsd serving %s at serial %d on %s", self.config.zone.name, self.view.serial,
                 ", ".join(f"{a.host}:{p}" for a, p in self.bound))

    async def _follow(self) -> None:
        watch = asyncio.create_task(self._watch_serial())
        tasks = [asyncio.create_task(self._resign())] if self.view.dnssec is not None else []
        if self.view.dnssec is not None and not self.worker:
            tasks.append(asyncio.create_task(self._roll()))
        try:
            await self.follower.run()
        finally:
            watch.cancel()
            for t in tasks:
                t.cancel()

    async def _resign(self) -> None:
        """A quiet zone keeps its cached answers for ever; a new generation every hour
        makes them be rebuilt, so a signature is served for at most an hour past its
        refresh point (refresh is at least an hour before expiry)."""
        while True:
            await asyncio.sleep(RESIGN_INTERVAL)
            self.view.bump(self.view.serial)

    async def _open_keys(self, meta: Mapping[str, str | None]) -> None:
        """Open the private keys of a new DNSSEC key list before the view reads it (meta
        holds the public halves; the sealed private ones are read here, by dnsd alone).
        One that does not open is reported (never its content) and the view keeps the
        keys it has."""
        if zonekeys.META_KEY not in meta:
            return
        for k in self.view.needs_private(meta[zonekeys.META_KEY]):
            try:
                private = await zonekeys.open_private(self.store, self.seal, k)
            except zonekeys.KeyMaterialError as e:
                log.error("dnssec: %s; answers keep the previous keys", e)
                continue
            self.view.private_keys[zonekeys.secret_name(k)] = private

    async def _roll(self) -> None:
        """Moves a key rollover on when its next phase is due (every gateway of a fleet
        tries; the store's compare-and-swap lets one change land). The new keys reach the
        view through the feed like any change."""
        timing = keyroll.Timing.from_config(self.config)
        transfers = bool(self.config.dns.secondaries or self.config.dns.transfer_allow)
        while True:
            await asyncio.sleep(ROLL_INTERVAL)
            try:
                await keyroll.advance_stored(self.store, self.seal, timing)
                if transfers:
                    await self._resign_for_secondaries()
            except (keyroll.RolloverError, zonekeys.KeyMaterialError) as e:
                log.error("dnssec rollover: %s", e)
            except StoreError as e:  # the feed reports outages; try again next tick
                log.debug("dnssec rollover: store unavailable (%s)", e)
            except Exception:
                log.exception("dnssec rollover tick failed; trying again next tick")

    async def _resign_for_secondaries(self) -> None:
        """Secondaries keep the RRSIGs of their last transfer until the serial moves, and
        a transfer carries signatures with at least ``signature_refresh`` left: a store
        write every half of that moves the serial (NOTIFY, a fresh transfer), so no
        secondary serves a signature with less than half of it left. One gateway of a
        fleet lands the write (compare-and-swap)."""
        text = await self.store.get_meta(zonekeys.RESIGNED_META)
        now = time.time()
        try:
            last = float(text) if text is not None else 0.0
        except ValueError:
            last = 0.0
        if now - last >= self.config.dnssec.signature_refresh / 2:
            await self.store.swap_meta(zonekeys.RESIGNED_META, text, f"{now:.0f}")

    async def _watch_serial(self) -> None:
        """Changes with nothing for DNS in them (owners) still move the SOA serial."""
        notified = self.view.serial
        while True:
            await self.follower.applied.wait()
            if self.follower.serial != self.view.serial:
                self.journal.bump(self.follower.serial)
            if self.notifier is not None and self.view.serial != notified:
                notified = self.view.serial
                self.notifier.changed(notified)

    async def stop(self) -> None:
        await self.pool.stop()
        await stop_task(self._task)
        self._task = None
        if self.notifier is not None:
            await self.notifier.stop()
        for u in self._udp:
            u.close()
        for s in self._servers:
            s.close()
        for c in list(self.tcp_conns):
            if c.transport is not None:
                c.transport.abort()
        for s in self._servers:
            await s.wait_closed()
        self._udp.clear()
        self._servers.clear()


def build(config: Config, store: Store, registry: CollectorRegistry) -> DnsService:
    return DnsService(config, store, registry)


def worker(config: Config, store: Store, registry: CollectorRegistry) -> DnsService:
    return DnsService(config, store, registry, worker=True)
