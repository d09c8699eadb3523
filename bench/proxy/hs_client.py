"""Full TLS handshakes per second, with SNI (``openssl s_time`` cannot send SNI).

Each process opens a fresh connection per request, sends ``GET PATH`` with
``Connection: close`` and reads to EOF -- what ``s_time -new -www`` does, plus the server
name a name-routed proxy needs. It never resumes a session, unless RESUME is "resume":
then each connection offers the TLS 1.3 ticket of the one before (``s_time -reuse``).
Prints the number of completed connections and errors (and, resuming, how many were
resumed); the caller divides by wall time.
usage: hs_client.py HOST PORT SNI SECONDS PROCS [PATH] [RESUME]
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import ssl
import sys
import time


def worker(host: str, port: int, sni: str, seconds: float, path: str, resume: bool,
           out: mp.Queue) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not resume:
        ctx.options |= ssl.OP_NO_TICKET
    req = f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode()
    n = errors = resumed = 0
    session: ssl.SSLSession | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
                s.sendall(req)
                while s.recv(65536):
                    pass
                resumed += s.session_reused
                if resume:
                    session = s.session  # the ticket that came with this connection
            n += 1
        except (OSError, ssl.SSLError):
            errors += 1
            session = None
    out.put((n, errors, resumed))


def main() -> None:
    host, port, sni, seconds, procs = sys.argv[1], int(sys.argv[2]), sys.argv[3], \
        float(sys.argv[4]), int(sys.argv[5])
    path = sys.argv[6] if len(sys.argv) > 6 else "/1k.bin"
    resume = len(sys.argv) > 7 and sys.argv[7] == "resume"
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=worker, args=(host, port, sni, seconds, path, resume, q))
          for _ in range(procs)]
    for p in ps:
        p.start()
    total = errs = reused = 0
    for _ in ps:
        n, e, r = q.get(timeout=seconds + 30)
        total += n
        errs += e
        reused += r
    for p in ps:
        p.join(10)
    print(total, errs, reused)


if __name__ == "__main__":
    main()
