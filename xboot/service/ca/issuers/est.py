"""Issuer EST: the checked CSR goes to an upstream RFC 7030 server's `/simpleenroll`.

`IssuerUrl` is the upstream's EST base, e.g. `https://est.example.com/.well-known/est` (with a label
segment if it has one). xboot authenticates as a registration authority: HTTP Basic
(`IssuerUsername`, `IssuerPassword`) and/or a TLS client certificate (`IssuerClientCertificateFile`,
`IssuerClientKeyFile`). The CA chain comes from the upstream's `/cacerts` unless
`IssuerCaCertificates` pins it; either way it must lead to `IssuerTrustedFingerprint`.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from xboot.errors import BadGateway, ConfigurationError
from xboot.service.ca.issuers import Order
from xboot.service.ca.issuers.transport import SETTINGS as TRANSPORT_SETTINGS
from xboot.service.ca.issuers.transport import Answer, Endpoint, endpoint
from xboot.service.ca.issuers.upstream import Upstream
from xboot.service.settings import Settings

NAME = "EST"
USERNAME = "IssuerUsername"
PASSWORD = "IssuerPassword"  # noqa: S105 - the setting's name
_WHITESPACE = re.compile(rb"\s+")


def _headers(settings: Settings, upstream: Endpoint) -> dict[str, str]:
    username, password = settings.get(USERNAME), settings.raw(PASSWORD)
    if (username is None) != (password is None):
        raise ConfigurationError(f"settings {USERNAME} and {PASSWORD} go together (Issuer EST)")
    if username is None:
        return {}
    if upstream.scheme != "https" and not upstream.loopback:
        raise ConfigurationError(f"setting {PASSWORD} would cross the network in clear text: use an https:// IssuerUrl")
    assert password is not None
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def _certificates(answer: Answer, what: str) -> list[x509.Certificate]:
    """A certs-only PKCS#7 in base64 (RFC 7030; RFC 8951: whatever Content-Transfer-Encoding says)."""
    if answer.status != 200:
        raise BadGateway(
            f"the upstream CA (Issuer EST) refused {what} (HTTP {answer.status}); nothing was issued",
            code="upstream_refused",
        )
    try:
        der = base64.b64decode(_WHITESPACE.sub(b"", answer.body), validate=True)
        return pkcs7.load_der_pkcs7_certificates(der)
    except (binascii.Error, ValueError):
        raise BadGateway(
            f"the upstream CA (Issuer EST) answered {what} with something other than base64 PKCS#7 certificates",
            code="upstream_invalid_answer",
        ) from None


def fetch_ca(settings: Settings) -> list[x509.Certificate]:
    upstream = endpoint(settings, NAME)
    headers = {**_headers(settings, upstream), "Accept": "application/pkcs7-mime"}
    return _certificates(upstream.call("GET", "/cacerts", headers=headers), "/cacerts")


def sign(order: Order, settings: Settings) -> list[x509.Certificate]:
    upstream = endpoint(settings, NAME)
    headers = {
        **_headers(settings, upstream),
        "Content-Type": "application/pkcs10",
        "Content-Transfer-Encoding": "base64",
        "Accept": "application/pkcs7-mime",
    }
    body = base64.encodebytes(order.csr.public_bytes(Encoding.DER))
    return _certificates(upstream.call("POST", "/simpleenroll", body, headers), "the CSR")


ISSUER = Upstream(NAME, (*TRANSPORT_SETTINGS, USERNAME, PASSWORD), sign, fetch_ca)
