"""Certificate: a certificate the device already holds signs the request.

Either the device's current xboot certificate (a renewal: issued by our CA, in our audit log, unexpired,
not revoked, CN = registration ID), always accepted; or a manufacturer's birth certificate (IEEE 802.1AR
IDevID, an AWS-style claim certificate), accepted when this method is listed: its chain is validated like
a signed report's (verified path, current time, not revoked) up to a fingerprint in
`EnrollmentTrustedFingerprints`, and its CN (or subject serialNumber, `EnrollmentIdentityAttribute`)
must be the registration ID.

XBoot JSON carries `"Attestation": {"Certificates": [base64 DER, signer first], "Signature": base64}`, the
signature being what `openssl dgst -sha256 -sign signer.key csr.der` writes: ECDSA (DER) or RSA PKCS#1 v1.5,
SHA-256, over the exact CSR bytes. On EST the TLS client certificate plays this role.
"""

from __future__ import annotations

import datetime as dt
import json

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from xboot.errors import ConfigurationError, Forbidden, Unauthorized, Unprocessable
from xboot.pki import issued_by, normalize_fingerprint, sha256_fingerprint
from xboot.service.ca.issuers import load_issuing_ca
from xboot.service.enrollment.authorization import CERTIFICATE, EnrollmentRequest, Grant, accepted_methods
from xboot.service.lifecycle.audit import audit_key
from xboot.service.lifecycle.revocation import check_path, revoked
from xboot.service.reports.trust import TrustAnchors
from xboot.service.reports.verify import verify_path
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store

TRUSTED = "EnrollmentTrustedFingerprints"
IDENTITY = "EnrollmentIdentityAttribute"
_IDENTITY_ATTRIBUTES = {"cn": NameOID.COMMON_NAME, "serialnumber": NameOID.SERIAL_NUMBER}


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_credential")


def _check_signature(signer: x509.Certificate, signature: bytes, csr_der: bytes) -> None:
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, csr_der, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, csr_der, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise _invalid("the attestation certificate's key is neither EC nor RSA")
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        raise _invalid("the attestation signature over the CSR does not verify with its certificate") from None


def issued_by_this_ca(certificate: x509.Certificate, settings: Settings) -> bool:
    return issued_by(certificate, load_issuing_ca(settings).certificate)


def _recorded_fingerprint(registration_id: str, certificate: x509.Certificate, settings: Settings) -> str | None:
    """The fingerprint the audit log holds for this serial; None if there is no readable record."""
    try:
        data = open_data_store(settings).read(audit_key(registration_id, format(certificate.serial_number, "X")))
        document = json.loads(data) if data is not None else None
    except ValueError:  # no record a storage key could name, or not JSON: not something we issued
        return None
    value = document.get("sha256Fingerprint") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def _renewal(request: EnrollmentRequest, current: x509.Certificate, settings: Settings) -> Grant:
    """The device's current certificate of ours: in the audit log as issued, valid now, not revoked."""
    now = dt.datetime.now(dt.UTC)
    if now >= current.not_valid_after_utc:
        raise _invalid("the current certificate has expired: renew before it does, or enroll afresh")
    if now < current.not_valid_before_utc:
        raise _invalid("the current certificate is not yet valid")
    names = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    registration_id = str(names[0].value) if len(names) == 1 else None
    recorded = _recorded_fingerprint(registration_id, current, settings) if registration_id is not None else None
    if recorded != sha256_fingerprint(current):
        raise _invalid("the current certificate is not in this service's issuance records")
    hit = revoked(current, settings)
    if hit is not None:
        raise _invalid(f"the current certificate is revoked ({hit.reason}); an operator must enroll it afresh")
    if registration_id != request.registration_id:
        raise Forbidden("the current certificate belongs to another registration ID", code="credential_mismatch")
    return Grant("Certificate", renewal_of=current)


def _trusted(settings: Settings) -> TrustAnchors:
    values = [v for v in (settings.get(TRUSTED) or "").split(",") if v.strip()]
    fingerprints = [normalize_fingerprint(v) for v in values]
    if not fingerprints or None in fingerprints:
        raise ConfigurationError(
            f"setting {TRUSTED}: comma-separated SHA-256 fingerprints of the manufacturer CAs to trust"
        )
    return TrustAnchors(frozenset(f for f in fingerprints if f is not None))


def _identity(certificate: x509.Certificate, settings: Settings) -> str | None:
    name = (settings.get(IDENTITY) or "CN").strip().lower()
    oid = _IDENTITY_ATTRIBUTES.get(name)
    if oid is None:
        raise ConfigurationError(f"setting {IDENTITY}: use CN or serialNumber")
    values = certificate.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


def _birth_certificate(request: EnrollmentRequest, signer: x509.Certificate, settings: Settings) -> Grant | None:
    if CERTIFICATE not in accepted_methods(settings):
        return None  # only renewals count when Certificate is not listed: as if no credential was sent
    assert request.attestation is not None
    now = dt.datetime.now(dt.UTC)
    try:
        path, fingerprints = verify_path(signer, list(request.attestation.certificates[1:]), _trusted(settings), now)
        check_path(path, fingerprints, settings)
    except Unprocessable as refusal:
        raise _invalid(f"the attestation certificate is not trusted: {refusal.message}") from None
    if _identity(signer, settings) != request.registration_id:
        raise Forbidden(
            f"the attestation certificate's {settings.get(IDENTITY) or 'CN'} is not the registration ID",
            code="credential_mismatch",
        )
    return Grant("Certificate")


def authorize(request: EnrollmentRequest, settings: Settings) -> Grant | None:
    attestation = request.attestation
    if attestation is None:
        return None
    signer = attestation.certificates[0]
    if attestation.signature is not None:
        _check_signature(signer, attestation.signature, request.csr_der)
    if issued_by_this_ca(signer, settings):
        return _renewal(request, signer, settings)
    return _birth_certificate(request, signer, settings)
