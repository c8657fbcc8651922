"""A Python EST client (RFC 7030 with RFC 8951): the four operations xboot serves, and the enroll/renew flow.

Any EST server works, xboot's included: the base URL is whatever precedes the operation name,
`https://host/.well-known/est` by the RFC, `http://127.0.0.1:7071/api/.well-known/est` under
`xboot serve`. Standalone on purpose (standard library urllib and `cryptography` only) so that
xboot.device.client can re-export it without an import cycle.

Re-enrollment authenticates with the current certificate as the TLS client certificate
(`tls_context(client_certificate=..., client_key=...)`); the server then sees it, forwarded by its
front end. Nothing the server returns is taken on trust: the issued certificate must carry our key
and be signed by a CA certificate from /cacerts.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from xboot.pki import PrivateKey, generate_key, signature_hash

__all__ = ["EstClient", "EstEnrollment", "EstError", "est_enroll", "est_reenroll", "tls_context"]

MAX_RESPONSE_BYTES = 1024 * 1024
_WHITESPACE = re.compile(rb"\s+")
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class EstError(Exception):
    """The server refused (`status` 4xx, its explanation as the message) or failed, or its answer did not check out."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def tls_context(
    ca_file: str | Path | None = None,
    client_certificate: str | Path | None = None,
    client_key: str | Path | None = None,
) -> ssl.SSLContext:
    """Server verification (system roots, or `ca_file`) plus, for re-enrollment, the current certificate and key."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if client_certificate is not None:
        context.load_cert_chain(str(client_certificate), str(client_key) if client_key else None)
    return context


@dataclass(frozen=True)
class EstClient:
    base_url: str
    function_key: str | None = None
    context: ssl.SSLContext | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        loopback = parts.scheme == "http" and (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not loopback:
            raise EstError("EST runs over TLS (RFC 7030 section 3.3): use https:// (plain http only to loopback)")

    def cacerts(self) -> list[x509.Certificate]:
        return _certificates(self._call("GET", "cacerts"))

    def csrattrs(self) -> bytes | None:
        """The DER CsrAttrs the server wants reflected in the CSR, or None when it has no preference (204)."""
        body = self._call("GET", "csrattrs")
        return _unbase64(body) if body.strip() else None

    def simpleenroll(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        return _single(_certificates(self._call("POST", "simpleenroll", csr)))

    def simplereenroll(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        return _single(_certificates(self._call("POST", "simplereenroll", csr)))

    def _call(self, method: str, operation: str, csr: x509.CertificateSigningRequest | None = None) -> bytes:
        headers = dict(self.headers)
        body = None
        if csr is not None:
            body = base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))
            headers["Content-Type"] = "application/pkcs10"
        if self.function_key:
            headers["x-functions-key"] = self.function_key
        # The scheme was checked in __post_init__: https, or http to loopback only.
        url = f"{self.base_url.rstrip('/')}/{operation}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:  # noqa: S310
                return response.read(MAX_RESPONSE_BYTES + 1)[:MAX_RESPONSE_BYTES]
        except urllib.error.HTTPError as error:
            explanation = error.read(4096).decode("utf-8", "replace").strip() or error.reason
            raise EstError(f"{operation}: HTTP {error.code}: {explanation}", error.code) from None
        except (urllib.error.URLError, OSError) as error:
            raise EstError(f"{operation}: cannot reach {self.base_url}: {error}") from None


def _unbase64(body: bytes) -> bytes:
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", body), validate=True)
    except (binascii.Error, ValueError):
        raise EstError("the server's answer is not base64 DER") from None


def _certificates(body: bytes) -> list[x509.Certificate]:
    try:
        return pkcs7.load_der_pkcs7_certificates(_unbase64(body))
    except ValueError:
        raise EstError("the server's answer is not a certs-only CMS") from None


def _single(certificates: list[x509.Certificate]) -> x509.Certificate:
    if len(certificates) != 1:
        raise EstError(f"expected the issued certificate alone, got {len(certificates)} certificates")
    return certificates[0]


def _signed_csr(key: PrivateKey, subject: x509.Name) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, signature_hash(key))


@dataclass(frozen=True)
class EstEnrollment:
    key: PrivateKey
    certificate: x509.Certificate
    ca_certificates: tuple[x509.Certificate, ...]  # as /cacerts returned them (a set: no order promised)


def _accept(
    certificate: x509.Certificate, key: PrivateKey, subject: x509.Name, ca_certificates: list[x509.Certificate]
) -> EstEnrollment:
    """Ours (our key and subject), signed by a CA the server published, and valid now."""
    if certificate.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise EstError("the issued certificate is not for our key")
    if certificate.subject != subject:
        raise EstError("the issued certificate is not for the subject we asked for")
    for ca in ca_certificates:
        try:
            certificate.verify_directly_issued_by(ca)
            break
        except (InvalidSignature, ValueError, TypeError):
            continue
    else:
        raise EstError("the issued certificate is not signed by any CA certificate from /cacerts")
    now = dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise EstError("the issued certificate is not valid now")
    return EstEnrollment(key, certificate, tuple(ca_certificates))


def est_enroll(
    client: EstClient, registration_id: str, key: PrivateKey | None = None, key_type: str = "ec-p256"
) -> EstEnrollment:
    """First enrollment: a key made here (or given), CN = registration ID, the answer checked before it is kept."""
    key = key or generate_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)])
    ca_certificates = client.cacerts()
    return _accept(client.simpleenroll(_signed_csr(key, subject)), key, subject, ca_certificates)


def est_reenroll(
    client: EstClient, current: EstEnrollment, rekey: bool = True, key_type: str = "ec-p256"
) -> EstEnrollment:
    """Renewal (same key) or rekey (new key), same subject; `client` must authenticate with `current.certificate`."""
    key = generate_key(key_type) if rekey else current.key
    subject = current.certificate.subject
    ca_certificates = client.cacerts()
    return _accept(client.simplereenroll(_signed_csr(key, subject)), key, subject, ca_certificates)
