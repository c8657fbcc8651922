"""Enrollment: a registration ID and a CSR in, a recorded certificate out."""

from __future__ import annotations

import datetime as dt
import logging

from cryptography import x509

from xboot.errors import BadRequest, ConfigurationError, Forbidden
from xboot.service.ca.issuance import IssuedCertificate, build_certificate, check_csr, issued_subject, parse_csr
from xboot.service.ca.signer import load_signer
from xboot.service.enrollment.registration import load_registration_policy, validate_registration_id
from xboot.service.lifecycle.audit import record_issuance
from xboot.service.lifecycle.revocation import check_enrollment
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store

log = logging.getLogger(__name__)


def crl_distribution_point(settings: Settings) -> str | None:
    url = settings.get("CrlDistributionPointUrl")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigurationError("setting CrlDistributionPointUrl must be an http:// or https:// URL")
    return url


def enroll(registration_id: object, csr_text: object, settings: Settings) -> IssuedCertificate:
    """Checks run cheapest first; the audit record is written before anything is returned."""
    registration_id = validate_registration_id(registration_id)
    if not isinstance(csr_text, str) or not csr_text.strip():
        raise BadRequest("Csr is required (base64 DER or PEM PKCS#10)", code="invalid_csr")
    return enroll_csr(registration_id, parse_csr(csr_text), settings)


def enroll_csr(registration_id: str, csr: x509.CertificateSigningRequest, settings: Settings) -> IssuedCertificate:
    """The same path for a CSR its caller already parsed (EST reads the registration ID out of the CSR)."""
    registration_id = validate_registration_id(registration_id)
    key = check_csr(csr, registration_id)
    if not load_registration_policy(settings)(registration_id, csr):
        raise Forbidden(f"registration {registration_id} is not allowed to enroll", code="registration_refused")
    signer = load_signer(settings)
    check_enrollment(registration_id, key, settings)  # a dict lookup in the cached revocation list
    validity = dt.timedelta(days=settings.integer("CertificateValidityDays", 365, minimum=1, maximum=3650))
    now = dt.datetime.now(dt.UTC)
    crl_url = crl_distribution_point(settings)
    if crl_url is not None:
        signer.require_crl_sign("sign the CRL that CrlDistributionPointUrl points at")
    subject = issued_subject(registration_id, settings)
    certificate = build_certificate(subject, key, signer, validity, now, crl_url)
    issued = IssuedCertificate(registration_id, certificate, signer)
    record_issuance(open_data_store(settings), issued, now)
    log.info("issued certificate %s to %s", issued.serial_number, registration_id)
    return issued
