"""Authoritative DNS for the gateway's zone and its custom domains.

``wire`` parses and packs DNS messages (sans-IO, bounded), ``zone`` is the in-memory view
kept current from the store, ``responder`` turns query bytes into reply bytes, and
``service`` is the asyncio shell: UDP and TCP listeners, and the ``SO_REUSEPORT`` worker
processes of ``[dns] workers`` (``webgateway.workerpool``).
"""
