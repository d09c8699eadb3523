"""The dashboard's sign-in sessions: a bounded table in memory, keyed by a random id.

Why a server-side table rather than a signed cookie: signing out (or an expiry) ends the
session at once, with no revocation list to keep beside a signed value and no signing key
to create, guard and rotate. What a session holds is the *hash* of the token it was opened
with, never the token, and the caller is looked up again on every request, so rotating or
removing the token ends its sessions too. The price: sessions do not survive an API restart
(the owner signs in again) and each gateway of a fleet keeps its own.

Pure code over values and a clock: unit-tested without a server.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Session:
    id: str
    token_hash: str
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), shown once


class SessionTable:
    def __init__(
        self,
        ttl: float = 8 * 3600.0,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token_hash: str) -> Session:
        """A new session (ids and CSRF tokens are 256 random bits); the oldest is evicted
        when the table is full, so a flood of sign-ins cannot grow memory."""
        self._expire()
        s = Session(
            secrets.token_urlsafe(32),
            token_hash,
            secrets.token_urlsafe(32),
            self.clock() + self.ttl,
        )
        self._sessions[s.id] = s
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        s = self._sessions.get(session_id)
        if s is None:
            return None
        if s.expires <= self.clock():
            del self._sessions[session_id]
            return None
        return s

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = self.clock()
        while self._sessions:
            first = next(iter(self._sessions.values()))
            if first.expires > now:
                break
            self._sessions.popitem(last=False)


def same_secret(sent: object, expected: str) -> bool:
    """Constant-time comparison of a submitted CSRF value with the expected one."""
    if not isinstance(sent, str) or not sent or not expected:
        return False
    # bytes: compare_digest refuses non-ASCII str, and a hostile form may send any text
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode())
