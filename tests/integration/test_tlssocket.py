"""TlsSocket on loopback: a real TLS client against the handshake and the transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trustme
import uvloop

from proxy.readiness import Readiness
from proxy.tlssocket import TlsSocket


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.events.append("eof")

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


@asynccontextmanager
async def pair(timeout: float = 5.0, bulk: bool = False) -> AsyncIterator[tuple[
        asyncio.Task[TlsSocket], ssl.SSLContext, int]]:
    """A listener whose first accepted socket goes through ``TlsSocket.handshake``."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("t.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)

    async def serve() -> TlsSocket:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        tls = TlsSocket(Readiness(loop), conn, server_ctx, bulk=bulk)
        done: asyncio.Future[None] = loop.create_future()
        tls.handshake(timeout, lambda e: done.set_result(None) if e is None
                      else done.set_exception(e))
        try:
            await done
        except asyncio.CancelledError:
            tls.abort()
            raise
        return tls

    task = loop.create_task(serve())
    try:
        yield task, client_ctx, lsock.getsockname()[1]
    finally:
        task.cancel()
        lsock.close()


def run(coro: object) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)  # type: ignore[arg-type]


async def started(server: asyncio.Task[TlsSocket], ctx: ssl.SSLContext, port: int) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, TlsSocket, Recorder]:
    """A TLS client connected, its server side handshaken and started with a Recorder."""
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="t.test")
    tls = await asyncio.wait_for(server, 10)
    proto = Recorder()
    tls.start(proto)
    return r, w, tls, proto


def test_bytes_both_ways_back_pressure_and_the_clients_close() -> None:
    async def main() -> None:
        async with pair() as (server, ctx, port):
            r, w, tls, proto = await started(server, ctx, port)
            tls.set_write_buffer_limits(64 * 1024)
            w.write(b"hello")
            await w.drain()
            async with asyncio.timeout(10):
                while proto.data != b"hello":
                    await asyncio.sleep(0.01)
            big = bytes(range(256)) * 16 * 1024  # 4 MiB the client does not read yet
            tls.write(big)
            assert "pause" in proto.events and tls.get_write_buffer_size() > 0
            got = await asyncio.wait_for(r.readexactly(len(big)), 20)
            assert got == big and proto.events[-1] == "resume"
            w.close()  # close_notify, then FIN
            assert await asyncio.wait_for(proto.lost, 10) is None
            assert proto.events[-2:] == ["eof", "lost"]

    run(main())


def test_close_flushes_then_sends_close_notify() -> None:
    async def main() -> None:
        async with pair() as (server, ctx, port):
            r, w, tls, proto = await started(server, ctx, port)
            tls.write(b"x" * 300_000)
            tls.close()
            assert tls.is_closing()
            assert await asyncio.wait_for(r.read(), 10) == b"x" * 300_000  # EOF after it
            assert await asyncio.wait_for(proto.lost, 10) is None
            w.close()

    run(main())


@pytest.mark.parametrize("send", [b"", b"GET / HTTP/1.1\r\n\r\n" * 4])
def test_silent_or_garbage_client_fails_the_handshake_and_is_closed(send: bytes) -> None:
    async def main() -> None:
        async with pair(timeout=0.5) as (server, _, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(send)
            with pytest.raises(TimeoutError if not send else ssl.SSLError):
                await asyncio.wait_for(server, 10)
            # closed: at most an alert, then EOF; or a reset over the unread garbage
            with contextlib.suppress(ConnectionResetError):
                assert len(await asyncio.wait_for(r.read(), 10)) <= 7
            w.close()

    run(main())


def test_cancelled_handshake_closes_the_socket() -> None:
    async def main() -> None:
        async with pair() as (server, _, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.2)
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server
            assert await asyncio.wait_for(r.read(), 10) == b""
            w.close()

    run(main())


def test_reading_paused_then_resumed_with_nothing_queued() -> None:
    """Paused with no write queued, the socket is watched for nothing (mask 0); resuming
    must modify that registration, not register it again (it raised EEXIST)."""
    async def main() -> None:
        async with pair() as (server, ctx, port):
            r, w, tls, proto = await started(server, ctx, port)
            tls.pause_reading()
            w.write(b"while paused")
            await w.drain()
            await asyncio.sleep(0.1)
            assert proto.data == b""
            tls.resume_reading()
            async with asyncio.timeout(10):
                while proto.data != b"while paused":
                    await asyncio.sleep(0.01)
            tls.pause_reading()
            tls.resume_reading()
            tls.write(b"still here")
            assert await asyncio.wait_for(r.readexactly(10), 10) == b"still here"
            w.close()

    run(main())


async def dial(ctx: ssl.SSLContext, port: int, host: str = "t.test",
               session: ssl.SSLSession | None = None) -> TlsSocket:
    """A client TlsSocket, handshaken (or the handshake's error raised)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    tls = TlsSocket(Readiness(loop), sock, ctx, server_hostname=host, session=session)
    done: asyncio.Future[None] = loop.create_future()
    tls.handshake(5, lambda e: done.set_result(None) if e is None else done.set_exception(e))
    await done
    return tls


@asynccontextmanager
async def tls_server() -> AsyncIterator[tuple[trustme.CA, int]]:
    """An asyncio TLS echo server (ALPN ``x/1``) for ``t.test``."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("t.test").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["x/1"])

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    try:
        yield ca, server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_client_verifies_resumes_and_carries_bytes() -> None:
    async def main() -> None:
        async with tls_server() as (ca, port):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ca.configure_trust(ctx)
            ctx.set_alpn_protocols(["x/1"])
            tls = await dial(ctx, port)
            proto = Recorder()
            tls.start(proto)
            conn = tls.get_extra_info("ssl_object")
            assert conn.selected_alpn_protocol() == "x/1" and not conn.session_reused
            tls.write(b"ping")
            async with asyncio.timeout(10):
                while proto.data != b"ping":
                    await asyncio.sleep(0.01)
            session = conn.session  # the server's ticket came with the echo
            tls.close()
            again = await dial(ctx, port, session=session)
            again.start(Recorder())
            assert again.get_extra_info("ssl_object").session_reused
            again.abort()

    run(main())


@pytest.mark.parametrize("host, trusted", [("t.test", False), ("other.test", True)])
def test_client_refuses_a_server_that_does_not_verify(host: str, trusted: bool) -> None:
    async def main() -> None:
        async with tls_server() as (ca, port):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if trusted:
                ca.configure_trust(ctx)
            with pytest.raises(ssl.SSLCertVerificationError) as e:
                await dial(ctx, port, host=host)
            assert e.value.verify_message

    run(main())


class Counter(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        super().data_received(data)


@pytest.mark.parametrize("bulk, reads", [(False, 6), (True, 1)])
def test_bulk_reads_a_burst_of_full_records_at_once(bulk: bool, reads: int) -> None:
    """Six full records waiting: one read each, or with ``bulk`` one for all six (and a
    short message is one read either way)."""
    async def main() -> None:
        async with pair(bulk=bulk) as (server, ctx, port):
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                 server_hostname="t.test")
            tls = await asyncio.wait_for(server, 10)
            burst = bytes(range(256)) * 384  # 96 KiB: six records of 16 KiB
            w.write(burst)
            await w.drain()
            await asyncio.sleep(0.3)  # all of it in the server's socket buffer
            proto = Counter()
            tls.start(proto)
            async with asyncio.timeout(10):
                while len(proto.data) < len(burst):
                    await asyncio.sleep(0.01)
            assert proto.data == burst and proto.reads == reads
            w.write(b"short")
            async with asyncio.timeout(10):
                while len(proto.data) < len(burst) + 5:
                    await asyncio.sleep(0.01)
            assert proto.data.endswith(b"short") and proto.reads == reads + 1
            w.close()

    run(main())
