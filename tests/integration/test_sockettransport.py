"""SocketTransport and its non-blocking Connect on loopback, against real asyncio peers."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address

import uvloop

from proxy.readiness import Readiness
from proxy.sockettransport import Connect, SocketTransport
from webgateway.addresses import HostPort


class Recorder(asyncio.Protocol):
    def __init__(self, keep_open: bool = True) -> None:
        self.data = bytearray()
        self.events: list[str] = []
        self.keep_open = keep_open
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def run(coro: object) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)  # type: ignore[arg-type]


async def connect(port: int, protocol: asyncio.Protocol, timeout: float = 5.0) -> tuple[
        SocketTransport | None, BaseException | None]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[SocketTransport | None, BaseException | None]] = \
        loop.create_future()
    Connect(Readiness(loop), HostPort(ip_address("127.0.0.1"), port), protocol, timeout,
            lambda t, e: done.set_result((t, e)))
    return await asyncio.wait_for(done, 10)


def test_half_close_both_ways_then_lost() -> None:
    """Our FIN after the queued bytes; the peer still answers; its FIN then ends it all."""
    async def main() -> None:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def peer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            got.set_result(await r.read())  # to our EOF
            w.write(b"answer")
            await w.drain()
            w.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proto = Recorder()
        transport, exc = await connect(port, proto)
        assert transport is not None and exc is None and proto.events == ["made"]
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        big = b"q" * 3_000_000  # more than a socket buffer: queued, then flushed, then FIN
        transport.write(big)
        transport.write_eof()
        assert await asyncio.wait_for(got, 10) == big
        assert await asyncio.wait_for(proto.lost, 10) is None
        assert bytes(proto.data) == b"answer" and proto.events == ["made", "eof", "lost"]
        server.close()

    run(main())


def test_eof_closes_when_the_protocol_says_so() -> None:
    async def main() -> None:
        async def peer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"bye")
            w.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        proto = Recorder(keep_open=False)
        transport, _ = await connect(server.sockets[0].getsockname()[1], proto)
        assert transport is not None
        assert await asyncio.wait_for(proto.lost, 10) is None
        assert bytes(proto.data) == b"bye" and transport.is_closing()
        server.close()

    run(main())


def test_refused_and_cancelled_connects() -> None:
    async def main() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        transport, exc = await connect(port, Recorder())
        assert transport is None and isinstance(exc, ConnectionRefusedError)

        lsock = socket.create_server(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        called: list[object] = []
        c = Connect(Readiness(loop), HostPort(ip_address("127.0.0.1"), lsock.getsockname()[1]),
                    Recorder(), 0.05, lambda t, e: called.append((t, e)))
        c.cancel()
        await asyncio.sleep(0.2)  # past its timeout too: nothing is called
        assert called == [] and c.sock.fileno() == -1
        lsock.close()

    run(main())
