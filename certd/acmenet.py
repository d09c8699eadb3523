"""Everything we take from the ``acme`` library's private side, in one place.

``RetryingNetwork`` is ``acme.client.ClientNetwork`` with our retry policy (see
``schedule.on_error``): the library retries badNonce once and knows nothing of
Retry-After; Pebble rejects a share of good nonces on purpose and Let's Encrypt answers
429/503 under load. It keeps the nonce of error replies (saving a HEAD per retry),
retries badNonce with a fresh nonce, sleeps short Retry-After waits in the worker thread
and turns long ones into ``RetryLater`` so the scheduler, not a thread, does the waiting.

``post_as_get``, ``fetch_authorization`` and ``ari_cert_id`` put our names on the three
private client calls the order driver needs (``ClientV2`` has no public way to re-read an
order or an authorization by URL, nor to name a certificate for ARI). The rest of certd
calls only these and the library's public API; ``pyproject.toml`` bounds ``acme`` below
its next major version so that a release cannot change any of it silently.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import requests
from acme import client, errors, messages
from cryptography import x509

from certd.schedule import NetAction, on_error, parse_retry_after


class RetryLater(Exception):
    """Come back in ``delay`` seconds: the CA asked us to, or the fleet's budget of new
    orders per account is spent (``message`` says which)."""

    def __init__(self, delay: float, message: str) -> None:
        super().__init__(message)
        self.delay = delay


def ca_asks(delay: float, reason: str) -> RetryLater:
    return RetryLater(delay, f"{reason} (the CA asks to retry in {delay:.0f} s)")


class RetryingNetwork(client.ClientNetwork):
    def __init__(self, *args: Any, ca_url: str = "", **kwargs: Any) -> None:
        """``ca_url``: the CA's directory. The environment's proxy and CA-bundle settings
        (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) are read for it once here,
        not by requests on every request (that and a ``~/.netrc`` lookup were a fifth of
        the CPU of each ACME request)."""
        super().__init__(*args, **kwargs)
        if ca_url:
            env = self.session.merge_environment_settings(ca_url, {}, None, self.verify_ssl,
                                                          None)
            self.session.proxies.update(env["proxies"])
            self.verify_ssl = env["verify"]  # type: ignore[assignment]  # a path, as ours
            self.session.trust_env = False
        self.last_response: requests.Response | None = None
        self.bad_nonces = 0
        self.retry_waits = 0

    def _post_once(
        self,
        url: str,
        obj: Any,
        content_type: str = client.ClientNetwork.JOSE_CONTENT_TYPE,
        **kwargs: Any,
    ) -> requests.Response:
        new_nonce_url = kwargs.pop("new_nonce_url", None)
        if not self.key:
            raise errors.Error("no account key")
        data = self._wrap_in_jws(obj, self._get_nonce(url, new_nonce_url), url)
        kwargs.setdefault("headers", {"Content-Type": content_type})
        response: requests.Response = self._send_request("POST", url, data=data, **kwargs)
        self.last_response = response
        # RFC 8555 6.5: every reply, errors included, carries a fresh nonce: keep it.
        with contextlib.suppress(errors.BadNonce, errors.MissingNonce):
            self._add_nonce(response)
        checked: requests.Response = self._check_response(response, content_type=content_type)
        return checked

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        attempt = 0
        while True:
            attempt += 1
            self.last_response = None
            try:
                return self._post_once(*args, **dict(kwargs))
            except (messages.Error, errors.ClientError) as e:
                resp = self.last_response
                status = resp.status_code if resp is not None else 0
                problem = str(getattr(e, "typ", "") or "")
                retry_after = parse_retry_after(
                    resp.headers.get("Retry-After") if resp is not None else None, time.time()
                )
                decision = on_error(status, problem, retry_after, attempt)
                if decision.action is NetAction.RETRY_NOW:
                    self.bad_nonces += 1
                    continue
                if decision.action is NetAction.RETRY_AFTER:
                    self.retry_waits += 1
                    time.sleep(decision.delay)
                    continue
                if decision.action is NetAction.GIVE_UP_UNTIL:
                    raise ca_asks(decision.delay, f"HTTP {status} {problem}".strip()) from e
                raise


def post_as_get(c: client.ClientV2, url: str) -> requests.Response:
    """RFC 8555 POST-as-GET of ``url`` with the client's account key (orders, certificates)."""
    response: requests.Response = c._post_as_get(url)
    return response


def fetch_authorization(c: client.ClientV2, url: str) -> messages.AuthorizationResource:
    """The authorization at ``url``, parsed with its challenges."""
    authz: messages.AuthorizationResource = c._authzr_from_response(post_as_get(c, url), uri=url)
    return authz


def ari_cert_id(leaf: x509.Certificate) -> str:
    """The certificate's ARI identifier (authority key id and serial, base64url): the
    last path segment of its renewalInfo URL."""
    return str(client._renewal_info_path_component(leaf))
