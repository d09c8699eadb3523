"""Batched UDP I/O on Linux: ``recvmmsg``/``sendmmsg`` through ctypes, one system call a batch.

Why: measured with perf under resolver traffic, ``sendto`` was 45-64 % of dnsd's CPU, most
of it the loopback delivery waking the client once per reply (a cross-CPU interrupt, dear
under a VM); Knot sends a whole batch with one ``sendmmsg``. Python's socket module has
neither call, so the message headers live in preallocated buffers whose addresses ctypes
hands to libc: per batch, one template copy, two libc calls, and per datagram a slice and
a few ``struct.pack_into``. A reply goes back to the address its query came from (the
kernel's own ``sockaddr`` bytes, never decoded). ``available()`` is False off Linux or
without the calls; the listener then reads and writes one datagram at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from typing import Any

_MSG = 64  # sizeof(struct mmsghdr) on 64-bit Linux: msghdr (56) + msg_len + padding
_IOV = 16
_NAME = 128  # sizeof(struct sockaddr_storage)
_MSG_DONTWAIT = 0x40
_MSGHDR = struct.Struct("<QI4xQQQQi4xI4x")  # name, namelen, iov, iovlen, control, len, flags
_IOVEC = struct.Struct("<QQ")
_SENDHDR = struct.Struct("<QI4xQ")  # name, namelen, iov (iovlen is already 1)
_LEN = struct.Struct("<Q")


def _libc() -> Any:
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        for fn in (libc.recvmmsg, libc.sendmmsg):
            fn.restype = ctypes.c_int
        libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                  ctypes.c_void_p]
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


class _Area:
    """A bytearray whose address libc may use (kept alive, never resized)."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self._c = (ctypes.c_char * size).from_buffer(self.buf)
        self.addr = ctypes.addressof(self._c)
        self.view = memoryview(self.buf)


class BatchSocket:
    """Up to ``batch`` datagrams in per ``recv()``, all replies out per ``send()``."""

    def __init__(self, sock: socket.socket, batch: int = 64, size: int = 4096) -> None:
        if _LIBC is None:
            raise OSError("recvmmsg/sendmmsg are not available here")
        self.sock = sock
        self.fd = sock.fileno()
        self.batch = batch
        self.size = size
        self.family = sock.family
        self._data = _Area(batch * size)
        self._names = _Area(batch * _NAME)
        self._iov = _Area(batch * _IOV)
        self._msgs = _Area(batch * _MSG)
        self._out = _Area(batch * size)
        self._oiov = _Area(batch * _IOV)
        self._omsgs = _Area(batch * _MSG)
        for i in range(batch):
            _IOVEC.pack_into(self._iov.buf, i * _IOV, self._data.addr + i * size, size)
            _MSGHDR.pack_into(self._msgs.buf, i * _MSG, self._names.addr + i * _NAME, _NAME,
                              self._iov.addr + i * _IOV, 1, 0, 0, 0, 0)
            _IOVEC.pack_into(self._oiov.buf, i * _IOV, self._out.addr + i * size, 0)
            _MSGHDR.pack_into(self._omsgs.buf, i * _MSG, 0, 0, self._oiov.addr + i * _IOV, 1,
                              0, 0, 0, 0)
        self._template = bytes(self._msgs.buf)
        self._heads = struct.Struct("<" + "8xI44xI4x" * batch)  # (namelen, msg_len) each
        self._namelens: tuple[int, ...] = ()

    def recv(self) -> list[tuple[bytes, int]]:
        """The datagrams waiting (at most ``batch``), each with its slot for ``send``."""
        ctypes.memmove(self._msgs.addr, self._template, len(self._template))
        for _ in range(2):  # a pending ICMP error is reported once, then cleared
            n = _LIBC.recvmmsg(self.fd, self._msgs.addr, self.batch, _MSG_DONTWAIT, None)
            if n >= 0:
                break
            if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
        else:
            return []
        heads = self._heads.unpack_from(self._msgs.buf)
        self._namelens = heads[0 : 2 * n : 2]
        view, size = self._data.view, self.size
        return [(view[i * size : i * size + heads[2 * i + 1]].tobytes(), i) for i in range(n)]

    def host(self, slot: int) -> str:
        """The text address a datagram came from (for rate limiting by network)."""
        name = self._names.view[slot * _NAME : slot * _NAME + 24]
        if name[0] | name[1] << 8 == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, name[4:8])
        return socket.inet_ntop(socket.AF_INET6, name[8:24])

    def send(self, replies: list[tuple[int, bytes]]) -> int:
        """Each reply to where its slot's query came from; returns how many could not go."""
        out, omsgs, oiov, size = self._out, self._omsgs.buf, self._oiov.buf, self.size
        names, namelens, iov = self._names.addr, self._namelens, self._oiov.addr
        m = dropped = 0
        for slot, resp in replies:
            n = len(resp)
            if n > size:
                dropped += 1
                continue
            out.view[m * size : m * size + n] = resp
            _LEN.pack_into(oiov, m * _IOV + 8, n)
            _SENDHDR.pack_into(omsgs, m * _MSG, names + slot * _NAME, namelens[slot],
                               iov + m * _IOV)
            m += 1
        start = 0
        while start < m:
            sent = _LIBC.sendmmsg(self.fd, self._omsgs.addr + start * _MSG, m - start, 0)
            if sent <= 0:  # this one cannot go (a full buffer, say): drop it, go on
                dropped += 1
                start += 1
            else:
                start += sent
        return dropped

