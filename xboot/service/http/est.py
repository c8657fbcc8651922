"""EST (RFC 7030, with RFC 8951's clarifications) beside the XBoot endpoint: standard wire format, same issuance.

Bodies are base64 DER in both directions whatever Content-Type or Content-Transfer-Encoding claim
(RFC 8951 says to ignore the latter, and the bytes are checked strictly anyway). Refusals are 4xx
`text/plain` explanations (RFC 7030 section 4.2.3); server-side failures keep the JSON edge, so they
are logged and carry Retry-After like every other route. The registration ID is the CSR's subject CN:
EST has no other field for it.

Re-enrollment proves possession of the current certificate through TLS client authentication. Behind
App Service the front end terminates TLS and forwards the certificate in `X-ARR-ClientCert`; any
caller can send that header to a host that does not overwrite it, so it is believed only when
`EstTrustForwardedClientCert` says the deployment guarantees it (default: not believed).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable
from typing import ClassVar, ParamSpec

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from xboot.errors import BadRequest, Forbidden, XbootError
from xboot.pki import common_name
from xboot.service.ca.issuers import load_issuing_ca
from xboot.service.enrollment.authorization import Attestation, EnrollmentRequest
from xboot.service.enrollment.authorization.certificate import issued_by_this_ca
from xboot.service.enrollment.enroll import enroll
from xboot.service.enrollment.registration import validate_registration_id
from xboot.service.http.edge import ApiResponse, check_size, error_headers
from xboot.service.settings import Settings

PKCS7_MIME = "application/pkcs7-mime"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
CSRATTRS_MIME = "application/csrattrs"
CLIENT_CERT_HEADER = "X-ARR-ClientCert"
TRUST_SETTING = "EstTrustForwardedClientCert"

_WHITESPACE = re.compile(rb"\s+")

P = ParamSpec("P")
# simpleenroll and simplereenroll: (body, Authorization, forwarded client certificate, function key checked, settings)
Enrollment = Callable[[bytes, str | None, str | None, bool, Settings], ApiResponse]


def plain_text_refusals(endpoint: Callable[P, ApiResponse]) -> Callable[P, ApiResponse]:
    """4xx become the human-readable text/plain body RFC 7030 asks for, 401s with their WWW-Authenticate
    challenges (stock EST clients send credentials only after one); 5xx go on to `respond`."""

    @functools.wraps(endpoint)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ApiResponse:
        try:
            return endpoint(*args, **kwargs)
        except XbootError as error:
            if error.status >= 500:
                raise
            body = f"{error.message}\n".encode()
            return ApiResponse(error.status, body, error_headers(error), content_type="text/plain")

    return wrapper


def _base64(der: bytes) -> bytes:
    """76-character lines: `openssl base64 -d` silently truncates a single long line."""
    return base64.encodebytes(der)


def _unbase64(data: bytes, what: str) -> bytes:
    compact = _WHITESPACE.sub(b"", data)
    if not compact:
        raise BadRequest(f"{what} is empty; EST expects base64 DER", code="invalid_base64")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"{what} is not base64; EST bodies are base64 DER (not PEM, not binary DER)", code="invalid_base64"
        ) from None


def _certs_only(certificates: list[x509.Certificate]) -> bytes:
    return _base64(pkcs7.serialize_certificates(certificates, Encoding.DER))


def read_csr(body: bytes) -> x509.CertificateSigningRequest:
    der = _unbase64(check_size(body), "the request body")
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise BadRequest("the request body is not a base64 DER PKCS#10 request", code="invalid_csr") from None


def registration_id_of(csr: x509.CertificateSigningRequest) -> str:
    """The subject's single CN, held to the registration ID rules (DPS takes the ID from the CN too)."""
    name = common_name(csr.subject)
    if name is None:
        raise BadRequest("the CSR subject must have exactly one CN: the registration ID", code="cn_mismatch")
    try:
        return validate_registration_id(name)
    except BadRequest as error:
        raise BadRequest(f"the CSR's CN is the registration ID: {error.message}", code=error.code) from None


def _issue(request: EnrollmentRequest, settings: Settings) -> ApiResponse:
    """RFC 7030 section 4.2.3: the response holds only the issued certificate (the chain is /cacerts)."""
    issued = enroll(request, settings)
    return ApiResponse(200, _certs_only([issued.certificate]), content_type=CERTS_ONLY)


def _request(
    csr: x509.CertificateSigningRequest,
    authorization: str | None,
    client_certificate: x509.Certificate | None,
    function_key_checked: bool,
) -> EnrollmentRequest:
    """The TLS client certificate, when there is one, is the Certificate method's attestation: the
    handshake proved possession of its key, so no signature comes with it."""
    attestation = Attestation((client_certificate,), None) if client_certificate is not None else None
    return EnrollmentRequest(
        registration_id=registration_id_of(csr),
        csr=csr,
        csr_der=csr.public_bytes(Encoding.DER),
        authorization=authorization,
        attestation=attestation,
        function_key_checked=function_key_checked,
    )


@plain_text_refusals
def cacerts(settings: Settings) -> ApiResponse:
    """`GET /cacerts`: the issuing CA and the chain above it (an upstream's, when an upstream issues)."""
    ca = load_issuing_ca(settings)
    return ApiResponse(200, _certs_only([ca.certificate, *ca.chain]), content_type=PKCS7_MIME)


@plain_text_refusals
def simpleenroll(
    body: bytes,
    authorization: str | None,
    client_certificate: str | None,
    function_key_checked: bool,
    settings: Settings,
) -> ApiResponse:
    """`POST /simpleenroll`: `/api/certificate`'s checks, authorization, policy and audit; the ID is the CN.

    Credentials as RFC 7030 clients send them: HTTP Basic (registration ID, device key), Bearer (an
    enrollment token) or the TLS client certificate.
    """
    csr = read_csr(body)
    current = forwarded_certificate(client_certificate, settings)
    return _issue(_request(csr, authorization, current, function_key_checked), settings)


@plain_text_refusals
def simplereenroll(
    body: bytes,
    authorization: str | None,
    client_certificate: str | None,
    function_key_checked: bool,
    settings: Settings,
) -> ApiResponse:
    """`POST /simplereenroll`: a new certificate for the subject of the current one, which the TLS client
    certificate proves (RFC 7030 section 3.3.2); that is enough, whatever EnrollmentAuthorization says."""
    if not settings.boolean(TRUST_SETTING, False):
        raise Forbidden(
            "re-enrollment needs TLS client authentication, which this server does not accept "
            f"({TRUST_SETTING} is off); enroll with /simpleenroll",
            code="client_certificate_not_trusted",
        )
    current = forwarded_certificate(client_certificate, settings)
    if current is None:
        raise Forbidden(
            "re-enrollment needs TLS client authentication with the certificate being renewed",
            code="client_certificate_required",
        )
    if not issued_by_this_ca(current, settings):
        raise Forbidden("the client certificate was not issued by this CA", code="client_certificate_untrusted")
    csr = read_csr(body)
    if csr.subject != current.subject:
        raise Forbidden(
            "the CSR subject must equal the subject of the certificate being renewed (RFC 7030 section 4.2.2)",
            code="subject_mismatch",
        )
    return _issue(_request(csr, authorization, current, function_key_checked), settings)


def forwarded_certificate(header: str | None, settings: Settings) -> x509.Certificate | None:
    """The TLS client certificate as the front end forwarded it; None unless the deployment vouches for the
    header (`EstTrustForwardedClientCert`: the front end strips it from clients and sets it from TLS)."""
    if header is None or not header.strip() or not settings.boolean(TRUST_SETTING, False):
        return None
    try:
        return x509.load_der_x509_certificate(_unbase64(header.encode("ascii", "replace"), "the header"))
    except (BadRequest, ValueError):
        raise Forbidden("the forwarded client certificate is unreadable", code="client_certificate_invalid") from None


class _OidSet(core.SetOf):
    _child_spec = core.ObjectIdentifier


class _Attribute(core.Sequence):
    _fields: ClassVar = [("type", core.ObjectIdentifier), ("values", _OidSet)]


class _AttrOrOid(core.Choice):
    _alternatives: ClassVar = [("oid", core.ObjectIdentifier), ("attribute", _Attribute)]


class CsrAttrs(core.SequenceOf):
    """RFC 7030 section 4.5.2 (ASN.1 clarified by RFC 8951): a SEQUENCE OF an OID or an Attribute."""

    _child_spec = _AttrOrOid


# One CSR has one key, so the answer names one profile: an EC P-256 key, signed with ECDSA-SHA256.
# That is RFC 7030's own encoding (key type as an Attribute of the SubjectPublicKeyInfo algorithm with
# its curve, signature scheme as a bare OID) and the profile most device stacks and TPMs support.
# RSA 2048+ and P-384 keys are still accepted; a list of alternatives has no unambiguous encoding.
CSR_ATTRIBUTES = CsrAttrs(
    [
        _AttrOrOid(
            name="attribute",
            value=_Attribute({"type": "1.2.840.10045.2.1", "values": ["1.2.840.10045.3.1.7"]}),
        ),
        _AttrOrOid(name="oid", value="1.2.840.10045.4.3.2"),
    ]
).dump()


@plain_text_refusals
def csrattrs() -> ApiResponse:
    """`GET /csrattrs`: the key and signature profile to put in the CSR (RFC 7030 section 4.5)."""
    return ApiResponse(200, _base64(CSR_ATTRIBUTES), content_type=CSRATTRS_MIME)
