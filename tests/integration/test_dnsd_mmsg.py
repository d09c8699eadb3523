"""Batched UDP I/O (recvmmsg/sendmmsg through ctypes) on real loopback sockets."""

from __future__ import annotations

import socket

import pytest

from dnsd import mmsg

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg: Linux only")


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])
def test_batches_in_and_replies_go_back_to_each_sender(family: int, host: str) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as srv:
        srv.bind((host, 0))
        srv.setblocking(False)
        b = mmsg.BatchSocket(srv, batch=4, size=512)
        clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(6)]
        try:
            for i, c in enumerate(clients):
                c.settimeout(2)
                c.sendto(b"query %d" % i, srv.getsockname()[:2])
            first = b.recv()
            assert [d for d, _ in first] == [b"query %d" % i for i in range(4)]
            assert {b.host(s) for _, s in first} == {host}
            # replies in another order, one too big for a slot: that one is counted, not sent
            replies = [(s, d.upper()) for d, s in reversed(first)] + [(first[0][1], b"x" * 513)]
            assert b.send(replies) == 1
            for i, c in enumerate(clients[:4]):
                assert c.recv(600) == b"QUERY %d" % i
            assert [d for d, _ in b.recv()] == [b"query 4", b"query 5"]
            assert b.recv() == []  # nothing waiting: no error, no block
            clients[0].settimeout(0.2)
            with pytest.raises(TimeoutError):
                clients[0].recv(600)  # the oversized reply never went
        finally:
            for c in clients:
                c.close()


def test_a_sender_gone_does_not_stop_the_others() -> None:
    """An ICMP port-unreachable from a vanished client must not wedge the socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        b = mmsg.BatchSocket(srv, batch=8)
        gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gone.sendto(b"a", srv.getsockname())
        got = b.recv()
        gone.close()
        assert b.send([(got[0][1], b"to nobody")]) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            c.sendto(b"b", srv.getsockname())
            got = []
            for _ in range(3):
                got += b.recv()
                if got:
                    break
            assert [d for d, _ in got] == [b"b"]
            b.send([(got[0][1], b"B")])
            assert c.recv(10) == b"B"
