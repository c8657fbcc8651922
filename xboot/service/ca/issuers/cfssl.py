"""Issuer CFSSL: the checked CSR goes to CloudFlare's CFSSL (`cfssl serve`, multirootca) sign API.

`IssuerUrl` is the server's base, e.g. `http://cfssl.internal:8888`. With `IssuerAuthKey` (the hex
"standard" key of the profile's `auth_key`) requests go to `/api/v1/cfssl/authsign`, each carrying an
HMAC-SHA256 of itself, so only holders of the key can have CSRs signed; without it to
`/api/v1/cfssl/sign`. `IssuerProfile` and `IssuerLabel` choose CFSSL's signing profile and signer.
The CA chain comes from `/api/v1/cfssl/info` unless `IssuerCaCertificates` pins it; either way it
must lead to `IssuerTrustedFingerprint`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from xboot.errors import BadGateway, ConfigurationError
from xboot.service.ca.authority import IssuingCa
from xboot.service.ca.issuers import Order
from xboot.service.ca.issuers.transport import SETTINGS as TRANSPORT_SETTINGS
from xboot.service.ca.issuers.transport import endpoint
from xboot.service.ca.issuers.upstream import Upstream
from xboot.service.settings import Settings

NAME = "CFSSL"
AUTH_KEY = "IssuerAuthKey"
PROFILE = "IssuerProfile"
LABEL = "IssuerLabel"
JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def _auth_key(settings: Settings) -> bytes | None:
    value = settings.get(AUTH_KEY)
    if value is None:
        return None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise ConfigurationError(f'setting {AUTH_KEY} must be hex (CFSSL\'s "standard" auth key)') from None
    if len(key) < 16:
        raise ConfigurationError(f"setting {AUTH_KEY} must be at least 16 bytes (32 hex digits)")
    return key


def _result(path: str, body: dict[str, Any], settings: Settings, what: str) -> dict[str, Any]:
    answer = endpoint(settings, NAME).call("POST", path, json.dumps(body).encode(), JSON)
    try:
        document = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict):
        raise BadGateway(
            f"the upstream CA (Issuer CFSSL) answered {what} with something other than CFSSL's JSON",
            code="upstream_invalid_answer",
        )
    result = document.get("result")
    if answer.status != 200 or document.get("success") is not True or not isinstance(result, dict):
        errors = document.get("errors")
        code = errors[0].get("code") if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
        raise BadGateway(
            f"the upstream CA (Issuer CFSSL) refused {what} (HTTP {answer.status}, CFSSL error {code}); "
            "nothing was issued",
            code="upstream_refused",
        )
    return result


def _certificates(result: dict[str, Any], what: str) -> list[x509.Certificate]:
    text = result.get("certificate")
    try:
        if not isinstance(text, str):
            raise ValueError
        return x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise BadGateway(
            f"the upstream CA (Issuer CFSSL) answered {what} without a PEM certificate", code="upstream_invalid_answer"
        ) from None


def _selection(settings: Settings) -> dict[str, str]:
    chosen = {"profile": settings.get(PROFILE), "label": settings.get(LABEL)}
    return {name: value for name, value in chosen.items() if value is not None}


def fetch_ca(settings: Settings) -> list[x509.Certificate]:
    return _certificates(_result("/api/v1/cfssl/info", _selection(settings), settings, "info"), "info")


def sign(order: Order, settings: Settings) -> list[x509.Certificate]:
    csr = order.csr.public_bytes(Encoding.PEM).decode("ascii")
    # hosts: [] keeps CFSSL from copying SANs from the CSR; the subject is the CSR's (CN checked already)
    request = json.dumps({"certificate_request": csr, "hosts": [], **_selection(settings)}).encode()
    key = _auth_key(settings)
    if key is None:
        return _certificates(_result("/api/v1/cfssl/sign", json.loads(request), settings, "the CSR"), "the CSR")
    token = hmac.new(key, request, hashlib.sha256).digest()
    body = {"token": base64.b64encode(token).decode(), "request": base64.b64encode(request).decode()}
    return _certificates(_result("/api/v1/cfssl/authsign", body, settings, "the CSR"), "the CSR")


def revoke(serial: str, reason: str, ca: IssuingCa, settings: Settings) -> None:
    """`/api/v1/cfssl/revoke` (CFSSL needs its certificate database, `-db-config`, for it). CFSSL names a
    certificate by decimal serial and the hex key identifier of its CA; 1.2 (Debian's) stored an empty
    identifier, so that is tried when the CA's own is not found."""
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        ski = ""
    body = {"serial": str(int(serial, 16)), "reason": reason}
    for identifier in dict.fromkeys((ski, "")):
        try:
            _result("/api/v1/cfssl/revoke", {**body, "authority_key_id": identifier}, settings, "the revocation")
            return
        except BadGateway:
            if identifier == "":
                raise


ISSUER = Upstream(NAME, (*TRANSPORT_SETTINGS, AUTH_KEY, PROFILE, LABEL), sign, fetch_ca, revoke)
