"""The shared core: what dnsd, certd and the proxy stand on, and the owners' way in.

Modules, one concept each, from the values outwards:

- ``model``          frozen values the store hands out (names, domains, certificates,
  snapshots and change sets).
- ``addresses``      host:port parsing for listen addresses and backends.
- ``dnsname``        validation of labels, zone names and custom domains.
- ``backend_policy`` which backend addresses may be used, judged on what they reach.
- ``when``           instants as RFC 3339 and as a date with days left.
- ``config``         the one validated configuration tree, from TOML; ``initconfig``
  ``webgateway init``, which writes a first one.
- ``listen``         binding a listening socket, the one way every service does it.
- ``store``          the store interface (a ``Protocol``) and its errors; ``sqlite_store``
  the embedded SQLite implementation.
- ``feed``           ``Follower``: one snapshot, then only the changes, into a service's view.
- ``tokens``         API tokens, stored only as digests; ``ratelimit`` slows token guessing.
- ``api``            the owners' REST API (aiohttp); ``openapi`` its description.
- ``dashboard``      the web pages at ``/`` (``templates/``, ``static/``); ``sessions`` their
  sign-in sessions.
- ``certinfo``       what a certificate file says that the store does not keep.
- ``service``        what the supervisor needs from a service; ``supervisor`` runs them in
  one process.
- ``delegation``     ``webgateway check``: is the zone delegated the way the config says;
  ``status`` the operator's one screen.
- ``cli``            the ``webgateway`` command; ``table`` its listings.
"""
