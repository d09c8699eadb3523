"""Our names for the acme library's private calls: a library change that breaks one fails here.

``post_as_get`` and ``fetch_authorization`` are driven against Pebble by every certd
integration test; the ARI identifier is checked here against the example of the ARI
specification, since a wrong one only makes renewalInfo lookups fail quietly.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from certd.acmenet import RetryingNetwork, ari_cert_id


def test_ari_cert_id_is_the_specification_example() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.example")])
    now = datetime.datetime.now(datetime.UTC)
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(0x87654321)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert ari_cert_id(leaf) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_the_environment_is_read_once_for_the_ca(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """Proxy and CA bundle from the environment still apply; requests stops re-reading
    them (and ~/.netrc) on every request."""
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = RetryingNetwork(key, alg=ES256, ca_url="https://acme.example/dir")
    assert net.session.trust_env is False
    assert net.session.proxies["https"] == "http://127.0.0.1:3128"
    assert net.verify_ssl == str(bundle)
    bypassed = RetryingNetwork(key, alg=ES256, verify_ssl="/etc/our-ca.pem",
                               ca_url="https://ca.internal.example/dir")
    assert "https" not in bypassed.session.proxies
    assert bypassed.verify_ssl == "/etc/our-ca.pem"  # [acme] ca_bundle wins over the env
    plain = RetryingNetwork(key, alg=ES256)
    assert plain.session.trust_env is True
