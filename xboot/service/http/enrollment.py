"""Endpoint logic: plain data in (bodies, query values), `ApiResponse` out."""

from __future__ import annotations

from xboot.service.enrollment.enroll import enroll
from xboot.service.http.edge import ApiResponse, field_ci, json_object
from xboot.service.settings import Settings


def enroll_certificate(body: bytes, settings: Settings) -> ApiResponse:
    """XBoot's `POST /api/certificate`: `certificate` stays base64 DER so XBoot.Client keeps working."""
    request = json_object(body)
    issued = enroll(field_ci(request, "RegistrationId"), field_ci(request, "Csr"), settings)
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
