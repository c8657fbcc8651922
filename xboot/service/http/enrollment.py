"""XBoot's `POST /api/certificate`: JSON and the Authorization header in, `ApiResponse` out."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from xboot.errors import BadRequest, Unauthorized
from xboot.service.ca.issuance import parse_csr
from xboot.service.enrollment.authorization import Attestation, EnrollmentRequest
from xboot.service.enrollment.enroll import enroll
from xboot.service.enrollment.registration import validate_registration_id
from xboot.service.http.edge import ApiResponse, field_ci, json_object
from xboot.service.settings import Settings

MAX_ATTESTATION_CERTIFICATES = 4
MAX_SIGNATURE_BYTES = 1024  # RSA-8192 signatures are 1,024 bytes; ECDSA far fewer


def _invalid_attestation(message: str) -> Unauthorized:
    return Unauthorized(f"Attestation: {message}", code="invalid_credential")


def _base64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise _invalid_attestation(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid_attestation(f"{what} is not base64") from None


def parse_attestation(value: object) -> Attestation | None:
    """`{"Certificates": [base64 DER, signer first, ...], "Signature": base64}`, keys in any case."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _invalid_attestation("must be an object with Certificates and Signature")
    certificates = field_ci(value, "Certificates")
    if not isinstance(certificates, list) or not 1 <= len(certificates) <= MAX_ATTESTATION_CERTIFICATES:
        raise _invalid_attestation(f"Certificates must list 1-{MAX_ATTESTATION_CERTIFICATES} certificates")
    parsed = []
    for index, item in enumerate(certificates, start=1):
        try:
            parsed.append(x509.load_der_x509_certificate(_base64(item, f"certificate #{index}")))
        except ValueError:
            raise _invalid_attestation(f"certificate #{index} is not a DER X.509 certificate") from None
    signature = _base64(field_ci(value, "Signature"), "Signature")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise _invalid_attestation("Signature is too long")
    return Attestation(tuple(parsed), signature)


def enrollment_request(
    document: Mapping[str, Any], authorization: str | None, function_key_checked: bool
) -> EnrollmentRequest:
    registration_id = validate_registration_id(field_ci(document, "RegistrationId"))
    csr_text = field_ci(document, "Csr")
    if not isinstance(csr_text, str) or not csr_text.strip():
        raise BadRequest("Csr is required (base64 DER or PEM PKCS#10)", code="invalid_csr")
    csr = parse_csr(csr_text)
    return EnrollmentRequest(
        registration_id=registration_id,
        csr=csr,
        csr_der=csr.public_bytes(Encoding.DER),
        authorization=authorization,
        attestation=parse_attestation(field_ci(document, "Attestation")),
        function_key_checked=function_key_checked,
    )


def enroll_certificate(
    body: bytes, authorization: str | None, function_key_checked: bool, settings: Settings
) -> ApiResponse:
    """`certificate` stays base64 DER so XBoot.Client keeps working; the rest is xboot's own."""
    issued = enroll(enrollment_request(json_object(body), authorization, function_key_checked), settings)
    return ApiResponse(
        200,
        {
            "certificate": issued.certificate_der_b64(),
            "certificateChain": issued.chain_pem(),
            "registrationId": issued.registration_id,
            "serialNumber": issued.serial_number,
            "notAfter": issued.not_after.isoformat().replace("+00:00", "Z"),
            "sha256Fingerprint": issued.fingerprint,
        },
    )
