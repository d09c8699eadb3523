"""Our ACME network retry policy against a real HTTP server on loopback.

Pebble enforces no rate limits, so a small server plays the CA here: it answers 503/429
with Retry-After and badNonce problems the way RFC 8555 describes them, and counts what
it received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from certd.acmenet import RetryingNetwork, RetryLater


class Ca:
    def __init__(self) -> None:
        self.script: list[tuple[int, str, str | None]] = []  # (status, problem, retry-after)
        self.posts: list[float] = []
        self.nonce_heads = 0
        self.n = 0


def _handler(ca: Ca) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _nonce(self) -> None:
            ca.n += 1
            self.send_header("Replay-Nonce", f"nonce{ca.n:06d}AAAA")

        def do_HEAD(self) -> None:
            ca.nonce_heads += 1
            self.send_response(200)
            self._nonce()
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ca.posts.append(time.monotonic())
            status, problem, retry = ca.script.pop(0) if ca.script else (200, "", None)
            if status == 200:
                body = json.dumps({"status": "valid"}).encode()
                ctype = "application/json"
            else:
                body = json.dumps({"type": problem, "detail": "scripted"}).encode()
                ctype = "application/problem+json"
            self.send_response(status)
            self._nonce()
            self.send_header("Content-Type", ctype)
            if retry is not None:
                self.send_header("Retry-After", retry)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return H


@pytest.fixture
def ca() -> Iterator[tuple[Ca, str]]:
    state = Ca()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield state, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def net() -> RetryingNetwork:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    return RetryingNetwork(key, alg=ES256, verify_ssl=False, timeout=5)


def post(n: RetryingNetwork, base: str) -> int:
    resp = n.post(f"{base}/acme/thing", messages.NewRegistration(),
                  new_nonce_url=f"{base}/nonce")
    return int(resp.status_code)


BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
RATE = "urn:ietf:params:acme:error:rateLimited"


def test_bad_nonce_retried_with_the_nonce_from_the_error(ca: tuple[Ca, str]) -> None:
    state, base = ca
    state.script = [(400, BAD_NONCE, None)] * 5
    n = net()
    assert post(n, base) == 200
    assert len(state.posts) == 6 and n.bad_nonces == 5
    assert state.nonce_heads == 1  # only the very first nonce was fetched


def test_503_short_retry_after_is_waited_then_retried(ca: tuple[Ca, str]) -> None:
    state, base = ca
    state.script = [(503, "urn:ietf:params:acme:error:serverInternal", "1")]
    n = net()
    assert post(n, base) == 200
    assert len(state.posts) == 2 and n.retry_waits == 1
    assert state.posts[1] - state.posts[0] >= 0.9


def test_429_long_retry_after_becomes_retry_later(ca: tuple[Ca, str]) -> None:
    state, base = ca
    state.script = [(429, RATE, "3600")]
    with pytest.raises(RetryLater) as ei:
        post(net(), base)
    assert ei.value.delay == 3600 and len(state.posts) == 1


def test_other_problems_are_raised_at_once(ca: tuple[Ca, str]) -> None:
    state, base = ca
    state.script = [(403, "urn:ietf:params:acme:error:unauthorized", None)]
    with pytest.raises(messages.Error) as ei:
        post(net(), base)
    assert ei.value.code == "unauthorized" and len(state.posts) == 1
