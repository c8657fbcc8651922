"""Enrollment: a registration ID and a CSR in, a recorded certificate out."""

from __future__ import annotations

import datetime as dt
import logging

from xboot.errors import Forbidden
from xboot.service.ca import issuers
from xboot.service.ca.issuance import IssuedCertificate, check_csr
from xboot.service.enrollment.authorization import EnrollmentRequest, authorize, spend_token
from xboot.service.enrollment.identity import check_identity, supersede_predecessors
from xboot.service.enrollment.registration import load_registration_policy, validate_registration_id
from xboot.service.lifecycle.audit import record_issuance
from xboot.service.lifecycle.revocation import check_enrollment
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store

log = logging.getLogger(__name__)


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
    issuer = issuers.resolve(settings)
    ca = issuer.authority(settings)
    check_enrollment(registration_id, key, settings)  # a dict lookup in the cached revocation list
    store = open_data_store(settings)
    now = dt.datetime.now(dt.UTC)
    records = check_identity(registration_id, key, grant, store, settings, now)
    validity = dt.timedelta(days=settings.integer("CertificateValidityDays", 365, minimum=1, maximum=3650))
    # an upstream is called only now, with everything checked; what it answers is checked in turn
    certificate = issuer.issue(issuers.Order(registration_id, csr, key, validity, now), ca, settings)
    issued = IssuedCertificate(registration_id, certificate, ca, issuer.name)
    spend_token(grant, store, registration_id, now)
    record_issuance(store, issued, now, grant.method)
    if grant.renewal_of is not None:
        supersede_predecessors(records, issued.serial_number, settings, now)
    log.info(
        "issued certificate %s to %s (%s, Issuer %s)", issued.serial_number, registration_id, grant.method, issuer.name
    )
    return issued
