"""NOTIFY (RFC 1996) to the secondaries: a pure scheduler and a thin asyncio sender.

The scheduler only sees serial changes, acknowledgements and the clock, and says what to
send when. Per secondary: the first change after a quiet spell goes out at once, a burst
after it gives at most one NOTIFY per ``min_interval`` carrying the newest serial, and an
unacknowledged NOTIFY is sent again after 1, 2, 4 ... ``max_backoff`` seconds, at most
``max_attempts`` times per serial (the secondary's refresh timer covers the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from dnsd import wire
from dnsd.tsig import Signer
from webgateway.addresses import HostPort
from webgateway.tasks import stop_task

log = logging.getLogger(__name__)


@dataclass
class _Peer:
    serial: int | None = None  # the serial still to be acknowledged
    due: float = 0.0  # when to send it
    last_sent: float = float("-inf")
    attempts: int = 0


class NotifySchedule:
    """What to send when; no I/O, the caller passes ``now`` (monotonic seconds)."""

    def __init__(self, targets: tuple[HostPort, ...], *, min_interval: float = 0.5,
                 first_retry: float = 1.0, max_backoff: float = 60.0,
                 max_attempts: int = 10) -> None:
        self.min_interval = min_interval
        self.first_retry = first_retry
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.peers = {t: _Peer() for t in targets}
        self.given_up = 0

    def changed(self, serial: int, now: float) -> None:
        for p in self.peers.values():
            p.serial = serial
            p.attempts = 0
            p.due = max(now, p.last_sent + self.min_interval)

    def acked(self, target: HostPort, serial: int, now: float) -> None:
        """``target`` acknowledged ``serial``: done, unless a newer one is waiting."""
        p = self.peers.get(target)
        if p is None or p.serial is None or serial != p.serial:
            return
        p.serial = None
        p.attempts = 0

    def due(self, now: float) -> list[tuple[HostPort, int]]:
        """The NOTIFYs to send now; they count as sent."""
        out = []
        for target, p in self.peers.items():
            if p.serial is None or p.due > now:
                continue
            if p.attempts >= self.max_attempts:
                log.warning("NOTIFY of serial %d to %s: no answer after %d tries, giving up",
                            p.serial, target, p.attempts)
                self.given_up += 1
                p.serial = None
                continue
            out.append((target, p.serial))
            backoff = min(self.first_retry * 2 ** p.attempts, self.max_backoff)
            p.attempts += 1
            p.last_sent = now
            p.due = now + max(backoff, self.min_interval)
        return out

    def next_due(self) -> float | None:
        """When ``due`` next has something (None: nothing pending)."""
        times = [p.due for p in self.peers.values() if p.serial is not None]
        return min(times) if times else None


def notify_message(zone: str, serial: int, msg_id: int) -> dns.message.Message:
    """NOTIFY for ``zone`` with our SOA serial as the hint (RFC 1996 section 3.7)."""
    m = dns.message.make_query(zone, dns.rdatatype.SOA, use_edns=False)
    m.id = msg_id
    m.flags = dns.flags.AA  # (dnspython keeps the opcode in the flags: set it after)
    m.set_opcode(dns.opcode.NOTIFY)
    soa = m.find_rrset(m.answer, m.question[0].name, dns.rdataclass.IN, dns.rdatatype.SOA,
                       create=True)
    soa.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, f". . {serial} 0 0 0 0"),
            0)
    return m


class NotifySender(asyncio.DatagramProtocol):
    """Sends what the schedule says from one UDP socket per address family; matches
    replies to requests by ID and sender, and acknowledges only a verified reply."""

    def __init__(self, zone: str, schedule: NotifySchedule, signer: Signer,
                 sources: Mapping[int, str]) -> None:
        """``sources``: the local address per family to send from (the address the
        secondaries know as the primary's), e.g. {4: "127.0.0.30"}."""
        self.zone = zone
        self.schedule = schedule
        self.signer = signer
        self.sources = sources
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self.pending: dict[tuple[int, HostPort], tuple[int, bytes]] = {}  # -> serial, mac
        self.wake = asyncio.Event()
        self.sent = 0
        self.acked = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for version in {t.host.version for t in self.schedule.peers}:
            family = socket.AF_INET6 if version == 6 else socket.AF_INET
            local = (self.sources.get(version, "::" if version == 6 else "0.0.0.0"), 0)
            transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=local,
                                                               family=family)
            self.transports[version] = transport
        self._task = asyncio.create_task(self._run(), name="dnsd-notify")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        for t in self.transports.values():
            t.close()
        self.transports.clear()

    def changed(self, serial: int) -> None:
        self.schedule.changed(serial, time.monotonic())
        self.wake.set()

    async def _run(self) -> None:
        while True:
            for target, serial in self.schedule.due(time.monotonic()):
                self._send(target, serial)
            nxt = self.schedule.next_due()
            timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def _send(self, target: HostPort, serial: int) -> None:
        transport = self.transports.get(target.host.version)
        if transport is None:
            return
        msg_id = secrets.randbelow(65536)
        m = notify_message(self.zone, serial, msg_id)
        m.use_tsig(self.signer.keyring, self.signer.key.name, algorithm=self.signer.key.algorithm)
        data = m.to_wire()
        for key in [k for k in self.pending if k[1] == target]:
            del self.pending[key]  # only the newest request per secondary is answered
        self.pending[(msg_id, target)] = (serial, m.mac or b"")
        transport.sendto(data, target.sockaddr)
        self.sent += 1
        log.debug("NOTIFY serial %d sent to %s", serial, target)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            target = HostPort(ipaddress.ip_address(str(addr[0])), int(str(addr[1])))
        except (ValueError, IndexError):
            return
        if len(data) < 12:
            return
        pending = self.pending.get((data[0] << 8 | data[1], target))
        if pending is None:
            return
        serial, mac = pending
        try:
            wire.scan_message(data)
            reply = self.signer.check_reply(data, mac)
        except Exception as e:  # hostile or broken bytes, or a bad signature
            log.warning("NOTIFY reply from %s rejected: %s", target, e)
            return
        if reply.opcode() != dns.opcode.NOTIFY or not reply.flags & dns.flags.QR:
            return
        if reply.rcode() != dns.rcode.NOERROR:
            log.warning("NOTIFY to %s answered %s", target, dns.rcode.to_text(reply.rcode()))
            return
        del self.pending[(data[0] << 8 | data[1], target)]
        self.acked += 1
        self.schedule.acked(target, serial, time.monotonic())
        self.wake.set()

    def error_received(self, exc: Exception) -> None:
        log.debug("NOTIFY socket error: %s", exc)
