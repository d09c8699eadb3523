"""tunnel.connect.connect_tcp on loopback: names tried address by address, errors raised."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from tunnel.connect import connect_tcp


def run(coro: object) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)  # type: ignore[arg-type]


def test_a_name_reaches_a_listener_on_one_of_its_addresses() -> None:
    """``localhost`` may resolve to ::1 first; a backend on 127.0.0.1 only is still reached."""
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            port = lsock.getsockname()[1]
            sock = await asyncio.wait_for(connect_tcp(asyncio.get_running_loop(),
                                                      "localhost", port), 10)
            with sock:
                assert sock.getpeername() == ("127.0.0.1", port)
                assert sock.getblocking() is False

    run(main())


def test_nothing_listening_raises_the_refusal() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(connect_tcp(asyncio.get_running_loop(),
                                                   "127.0.0.1", port), 10)

    run(main())
