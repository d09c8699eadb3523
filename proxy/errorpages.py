"""The HTTP pages the proxy answers with itself, where it terminates TLS and no backend
will: a complete HTTP/1.1 response that closes the connection (an h2 client just sees the
close: we do not speak h2 ourselves)."""

from __future__ import annotations

from typing import Final


def error_page(status: int, reason: str, text: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    body = (f"<html><body><h1>{status} {reason}</h1><p>{text}</p></body></html>\n").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


BAD_GATEWAY: Final = error_page(502, "Bad Gateway", "No backend is reachable.")
SERVICE_UNAVAILABLE: Final = error_page(
    503, "Service Unavailable", "This name has too many open connections; try again later."
)


def page_fits(alpn: str | None) -> bool:
    """Whether a connection that negotiated ``alpn`` can be answered with a page."""
    return alpn != "h2"
