"""The issuance audit log: one record per certificate, written before the certificate leaves.

Records live at `certificates/<registration id, lower case>/<serial>.json`, so listing
what a device was issued is a prefix listing. Two empty markers, written just before the record
and made durable with it, find a record without knowing its device:
- `certificate-serials/<last 2 hex>/<2 before>/<serial>.<registration id>`: revocation by serial
  is one small listing (random serials spread evenly over 65,536 folders);
- `certificate-expiry/<YYYYMMDD>/<HH>/<MMSS>-<serial>.<registration id>`: the fleet's certificates by
  notAfter, paged in O(page), for `--expiring-within`.
A crash between markers and record leaves markers without a record (readers skip them); the device got
no answer and asks again.
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


SERIAL_PREFIX = "certificate-serials/"
EXPIRY_PREFIX = "certificate-expiry/"


def serial_prefix(serial_number: str) -> str:
    padded = serial_number.rjust(4, "0")
    return f"{SERIAL_PREFIX}{padded[-2:]}/{padded[-4:-2]}/{serial_number}."


def expiry_key(not_after: dt.datetime, serial_number: str, registration_id: str) -> str:
    when = not_after.astimezone(dt.UTC)
    return f"{EXPIRY_PREFIX}{when:%Y%m%d/%H/%M%S}-{serial_number}.{registration_id.lower()}"


def parse_marker(key: str) -> tuple[str, str] | None:
    """(serial, registration id) from a serial or expiry marker."""
    name = key.rpartition("/")[2]
    if key.startswith(EXPIRY_PREFIX):
        name = name.partition("-")[2]  # after MMSS; a registration ID may hold '-' too
    serial, dot, registration_id = name.partition(".")
    return (serial, registration_id) if dot and serial and registration_id else None


def write_markers(store: ObjectStore, serial_number: str, registration_id: str, not_after: dt.datetime) -> None:
    """A record's serial and expiry markers, left for the record's own (flushed) write to make durable."""
    store.create(f"{serial_prefix(serial_number)}{registration_id.lower()}", b"", flush=False)
    store.create(expiry_key(not_after, serial_number, registration_id), b"", flush=False)


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
    write_markers(store, issued.serial_number, issued.registration_id, issued.not_after)  # durable with the record
    if not store.create(audit_key(issued.registration_id, issued.serial_number), data):
        # 128 random bits colliding means something is badly wrong: issue nothing.
        raise BackendUnavailable("audit record collision; retry")
