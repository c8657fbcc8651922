"""The issuance audit log: one record per certificate, written before the certificate leaves.

Records live at `certificates/<registration id, lower case>/<serial>.json`, so listing
what a device was issued is a prefix listing.
"""

from __future__ import annotations

import datetime as dt
import json

from xboot.errors import BackendUnavailable
from xboot.service.ca.issuance import IssuedCertificate
from xboot.service.storage import ObjectStore

AUDIT_PREFIX = "certificates/"


def audit_prefix(registration_id: str) -> str:
    """Where one device's records are: what it was issued is a prefix listing."""
    return f"{AUDIT_PREFIX}{registration_id.lower()}/"


def audit_key(registration_id: str, serial_number: str) -> str:
    return f"{audit_prefix(registration_id)}{serial_number}.json"


def record_issuance(store: ObjectStore, issued: IssuedCertificate, issued_at: dt.datetime, authorization: str) -> None:
    record = {
        "registrationId": issued.registration_id,
        "serialNumber": issued.serial_number,
        "sha256Fingerprint": issued.fingerprint,
        "subject": issued.certificate.subject.rfc4514_string(),
        "issuer": issued.ca.subject_text,
        "issuerSha256Fingerprint": issued.ca.fingerprint,
        "issuedBy": issued.issuer,  # the Issuer that signed: Local or an upstream (EST, CFSSL, Custom)
        "authorization": authorization,  # the method that authorized it: FunctionKey, DeviceKey, Token, Certificate
        "notBefore": issued.certificate.not_valid_before_utc.isoformat(),
        "notAfter": issued.not_after.isoformat(),
        "issuedAt": issued_at.isoformat(),
        "certificate": issued.pem,
    }
    data = json.dumps(record).encode("utf-8")  # no indent: it forces json's pure-Python encoder
    if not store.create(audit_key(issued.registration_id, issued.serial_number), data):
        # 128 random bits colliding means something is badly wrong: issue nothing.
        raise BackendUnavailable("audit record collision; retry")
