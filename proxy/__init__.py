"""proxy: the SNI proxy on :443 (TLS termination or passthrough) and the :80 redirect.

Modules, one concept each:

- ``clienthello`` pure ClientHello parser (SNI, ALPN; bounded, no recursion) and alerts.
- ``proxyproto``  pure PROXY protocol v2 header for backends that want the client address.
- ``routes``      the route table (SNI or Host -> name) kept current by the change feed.
- ``certs``       one ``SSLContext`` per certificate, reloaded only when its files change.
- ``balancer``    least connections with passive health (back-off after failed connects).
- ``connector``   how a backend is reached (TCP today; the seam for reverse tunnels).
- ``readiness``   one epoll of the connection sockets, registered once (as nginx does).
- ``sockettransport`` a transport on a non-blocking socket (plain TCP) and the
  non-blocking backend connect; ``tlssocket`` the same with OpenSSL's socket BIO.
- ``splice``      the byte pump: two Protocols back to back, flow control, idle timeout.
- ``engine``      what listeners share: limits (process and per name), the backend
  policy at connect time, metrics, live pairs and how to close them all.
- ``lingering``   closing a turned-away client without a reset.
- ``peek``        waiting for a complete ClientHello with ``MSG_PEEK`` (left in the kernel).
- ``dispatch``    a complete hello -> terminate, pass through, or an alert / error page;
  a hello with ALPN ``webgateway-tunnel/1`` and the zone as SNI is a node dialling in
  (handed to ``tunnel.gateway``, whose pool the engine draws from for tunnel names).
- ``https``       the :443 accept loop (batches, pause when out of descriptors).
- ``redirect``    the :80 listener: 301 to https:// for names we serve, else 404.
- ``service``     binds the listeners and follows the store; ``build(config, store, registry)``,
  and ``worker`` for the processes of ``[proxy] workers`` (``webgateway.workerpool``).
"""
