"""certd: ACME DNS-01 certificates through our own DNS.

Modules, one concept each (certmagic's Storage / Issuer / Solver split):

- ``schedule``  pure timing rules: renewal at ``acme.renew_fraction`` with jitter, ARI
  windows, exponential backoff, Retry-After, order polling, what is due.
- ``orderflow`` pure ACME order state machine (fresh and resumed orders alike).
- ``acmenet``   all we take from the ``acme`` library's private side: ``ClientNetwork``
  with our badNonce / 429 / 503 retry loop, and the private client calls behind our names.
- ``workers``   the ACME thread pool (one ``ClientNetwork`` per thread, oldest order first).
- ``issuer``    account (ES256 key, EAB, contact) and the order driver.
- ``dnscheck``  authoritative-TXT propagation check and custom-domain CNAME check.
- ``certfiles`` keys (0600), CSRs, atomic key/chain files.
- ``service``   the scheduler and ``build(config, store, registry)``.
"""
