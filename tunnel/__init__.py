"""Reverse tunnels: a hidden node (behind NAT, no inbound port) dials out to the gateway.

Package map:

- ``wire``     the sans-IO protocol of one tunnel connection: a few small frames (hello,
               accept/refuse, ping/pong, open/opened), then raw bytes. No sockets.
- ``backoff``  jittered exponential back-off for the node's reconnects (pure).
- ``pool``     the node's pool at one gateway as counts: when to dial, how many, when to
               shrink (pure).
- ``gateway``  the gateway's side: authenticates connections against the proxy's
               in-memory names and keeps, per name, the pool of idle connections the
               proxy hands out to clients (the connector's other half).
- ``node``     the node's side (``webgateway tunnel``): keeps a pool of idle connections
               to every gateway and, when the gateway opens one, connects it to ``--to``.
- ``settings`` the node's command line / TOML file, validated into one dataclass.

Why a pool of pre-dialed connections rather than one multiplexed session: once opened,
a tunnel connection is an ordinary TLS byte stream, so the proxy's existing splice pumps
it (flow control by TCP per stream: windows autotune to the kernel's limit, a slow
browser stalls only its own stream, no head-of-line blocking). Measured on loopback
(``bench/tunnel/transport_choice.py``): a framed multiplexer adds 0.13 ms of CPU per MiB
on top of TLS's 1.23 ms (+11 % on every byte, on both ends); the pool costs ~20 KiB of
gateway RSS per idle pooled connection (OpenSSL's per-connection state is 16 KiB of it), so
the node tops up a small pool in batches (8 by default) and keeps one connection on a
quiet link.
"""
