"""Authoritative DNS for the gateway's zone and its custom domains.

``wire`` parses and packs DNS messages (sans-IO, bounded), ``zone`` is the in-memory view
kept current from the store, ``responder`` turns query bytes into reply bytes, and
``service``/``workers`` are the asyncio shell: UDP and TCP listeners, SO_REUSEPORT workers.
"""
