"""Enrollment: a registration ID and a CSR in, a recorded certificate out."""

from __future__ import annotations

import datetime as dt
import logging

from xboot.errors import ConfigurationError, Forbidden
from xboot.service.ca.issuance import IssuedCertificate, build_certificate, check_csr, issued_subject
from xboot.service.ca.signer import load_signer
from xboot.service.enrollment.authorization import EnrollmentRequest, authorize, spend_token
from xboot.service.enrollment.identity import check_identity, supersede_predecessors
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


def enroll(request: EnrollmentRequest, settings: Settings) -> IssuedCertificate:
    """Checks run cheapest first; the audit record is written before anything is returned.

    Proof of possession, then who is asking (authorization), then what policy allows (registration
    policy, revocation, identity lock, daily limit); a single-use token is spent only when everything
    else has passed, just before the audit record, so a refused request does not burn it.
    """
    registration_id = validate_registration_id(request.registration_id)
    csr = request.csr
    key = check_csr(csr, registration_id)
    grant = authorize(request, settings)
    if not load_registration_policy(settings)(registration_id, csr):
        raise Forbidden(f"registration {registration_id} is not allowed to enroll", code="registration_refused")
    signer = load_signer(settings)
    check_enrollment(registration_id, key, settings)  # a dict lookup in the cached revocation list
    store = open_data_store(settings)
    now = dt.datetime.now(dt.UTC)
    records = check_identity(registration_id, key, grant, store, settings, now)
    validity = dt.timedelta(days=settings.integer("CertificateValidityDays", 365, minimum=1, maximum=3650))
    crl_url = crl_distribution_point(settings)
    if crl_url is not None:
        signer.require_crl_sign("sign the CRL that CrlDistributionPointUrl points at")
    subject = issued_subject(registration_id, settings)
    certificate = build_certificate(subject, key, signer, validity, now, crl_url)
    issued = IssuedCertificate(registration_id, certificate, signer)
    spend_token(grant, store, registration_id, now)
    record_issuance(store, issued, now, grant.method)
    if grant.renewal_of is not None:
        supersede_predecessors(records, issued.serial_number, settings, now)
    log.info("issued certificate %s to %s (%s)", issued.serial_number, registration_id, grant.method)
    return issued
