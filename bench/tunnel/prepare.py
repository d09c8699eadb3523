"""Set up the gateway side of the tunnel bench: config, zone certificate, owner and names.

Writes into STATE: ``webgateway.toml`` (everything on loopback, free ports), a throw-away
CA (``ca.pem``) and the zone's wildcard certificate in the store, an owner with three names --
``viassh`` (backend: the ``ssh -R`` listener), ``viatunnel`` (a tunnel name) and ``direct``
(the backend itself, the proxy's own baseline) -- plus
``idle0`` .. ``idleN-1`` tunnel names for the idle-RSS figure, the tunnel tokens
(``token``, ``idle-tokens``) and ``ports.env`` for the shell.

usage: python bench/tunnel/prepare.py STATE BACKEND_PORT SSH_R_PORT [IDLE_NAMES=1000]
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import trustme

from webgateway.addresses import parse_hostport
from webgateway.keyseal import KeySeal, slot
from webgateway.model import Certificate, CertState, Name
from webgateway.sqlite_store import SqliteStore
from webgateway.tokens import hash_token, new_token

ZONE = "gw.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(state: Path, backend_port: int, ssh_port: int, idle: int) -> None:
    https, http, api, dns = free_port(), free_port(), free_port(), free_port()
    (state / "webgateway.toml").write_text(f"""
[zone]
name = "{ZONE}"
gateway_ipv4 = ["127.0.0.1"]
gateway_ipv6 = []
nameservers = {{ "ns1.{ZONE}" = ["127.0.0.1"] }}
[dns]
listen = ["127.0.0.1:{dns}"]
[proxy]
https_listen = ["127.0.0.1:{https}"]
http_listen = ["127.0.0.1:{http}"]
max_connections = 20000
[api]
listen = "127.0.0.1:{api}"
admin_token_file = "admin.token"
allow_loopback_backends = true
max_names_per_owner = {idle + 10}
[store]
path = "var/webgateway.db"
certs_dir = "var/certs"
[log]
level = "warning"
""")
    certs = state / "var" / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(state / "ca.pem"))
    leaf = ca.issue_cert(f"*.{ZONE}", ZONE)
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems).decode()
    key = KeySeal().seal(slot("cert", "zone"), leaf.private_key_pem.bytes())
    store = SqliteStore(state / "var" / "webgateway.db")
    await store.open()
    try:
        await store.put_certificate(Certificate(
            "zone", (f"*.{ZONE}", ZONE), CertState.VALID, chain, key))
        owner = await store.create_owner("bench", hash_token(new_token()))
        await store.put_name(Name("viassh", owner.id,
                                  (parse_hostport(f"127.0.0.1:{ssh_port}"),)), idle + 10)
        await store.put_name(Name("direct", owner.id,
                                  (parse_hostport(f"127.0.0.1:{backend_port}"),)), idle + 10)
        token = new_token()
        await store.put_name(Name("viatunnel", owner.id, (), tunnel=True,
                                  tunnel_token_hash=hash_token(token)), idle + 10)
        (state / "token").write_text(token + "\n")
        idle_tokens = []
        for i in range(idle):
            t = new_token()
            idle_tokens.append(t)
            await store.put_name(Name(f"idle{i}", owner.id, (), tunnel=True,
                                      tunnel_token_hash=hash_token(t)), idle + 10)
        (state / "idle-tokens").write_text("\n".join(idle_tokens) + "\n")
    finally:
        await store.close()
    (state / "ports.env").write_text(f"HTTPS={https}\nAPI={api}\n")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                     int(sys.argv[4]) if len(sys.argv) > 4 else 1000))
