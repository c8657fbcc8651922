"""Stored reports: one record per signed report, and a per-gateway index for newest-first listing.

`reports/<kind>/<id>.json` holds the record (report, verification result, the signed
message as received). Its id comes from the signer certificate and the signed
attributes (which carry the content digest and signing time), so the same signed
report maps to the same record however it was transported, and `create` (atomic,
never overwrites) makes ingestion idempotent under concurrency.

`report-index/<kind>/<gateway>/<inverted received ms>-<id>` is an empty marker that
makes a prefix listing come out newest first. It is written after the record, so a
listing never names a record that is not fully stored; if the marker write fails,
the caller gets 503 and its retry, which finds the record, writes the marker.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization

from xboot.errors import BackendUnavailable, BadRequest
from xboot.service.reports.verify import Verification
from xboot.service.storage import ObjectStore, check_key, read_json

Kind = Literal["system", "update"]
_INVERT_MS = 10**13  # inverted epoch milliseconds stay 13 digits until the year 2286
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ID = re.compile(r"[0-9a-f]{32}")
_INDEX_ENTRY = re.compile(r"[0-9]{13}-[0-9a-f]{32}")
MAX_PLAIN_SEGMENT = 200
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def report_id(verification: Verification) -> str:
    """128 bits of SHA-256 over the signer certificate and the signed attributes, length-prefixed."""
    digest = hashlib.sha256(b"xboot report v1\x00")
    for part in (verification.signer.public_bytes(serialization.Encoding.DER), verification.signed_attributes):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()[:32]


def is_report_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def _gateway_segment(gateway_id: str) -> str:
    """A storage-safe, injective spelling of any gateway id, short enough for every store.

    Bytes outside [A-Za-z0-9_-] become =XX; a spelling longer than MAX_PLAIN_SEGMENT (128 accented
    characters make 768) becomes `sha256.` and the digest of the id instead. The two forms cannot meet:
    only the second contains a '.'. A string that is not valid Unicode (a lone surrogate, which JSON's
    \\ud800 escape can carry) is refused here, before anything is stored or looked up.
    """
    try:
        data = gateway_id.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("gatewayId is not valid Unicode text", code="invalid_gateway_id") from None
    plain = "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in data)
    if len(plain) <= MAX_PLAIN_SEGMENT:
        return plain
    return "sha256." + hashlib.sha256(data).hexdigest()


def record_key(kind: Kind, report: str) -> str:
    return f"reports/{kind}/{report}.json"


def _index_prefix(kind: Kind, gateway_id: str) -> str:
    return f"report-index/{kind}/{_gateway_segment(gateway_id)}/"


def _index_key(record: dict[str, Any]) -> str:
    received = dt.datetime.fromisoformat(record["receivedAt"])
    inverted = _INVERT_MS - (received - _EPOCH) // dt.timedelta(milliseconds=1)
    return f"{_index_prefix(record['kind'], record['gatewayId'])}{inverted:013d}-{record['id']}"


@dataclass(frozen=True)
class StoredReport:
    record: dict[str, Any]
    created: bool  # False: this signed report was stored before, by this or an earlier request


def store_report(
    store: ObjectStore,
    kind: Kind,
    document: dict[str, Any],
    verification: Verification,
    message: bytes,
    received_at: dt.datetime,
) -> StoredReport:
    identifier = report_id(verification)
    key = check_key(record_key(kind, identifier))
    record = {
        "id": identifier,
        "kind": kind,
        "gatewayId": document["gatewayId"],
        "receivedAt": received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "verification": verification.details(),
        "report": document,
        "signedMessage": base64.b64encode(message).decode("ascii"),
    }
    # The index entry first, then the record: a crash in between leaves an entry without a record, which
    # listings skip, never a stored report no listing shows. The device got no answer and sends again.
    entry = check_key(_index_key(record))
    store.create(entry, b"")
    created = store.create(key, json.dumps(record, indent=1).encode("utf-8"))
    if not created:
        existing = read_json(store, key)
        if existing is None:  # created and deleted in between: nothing deletes records, so storage is misbehaving
            raise BackendUnavailable("report storage is inconsistent; retry")
        record = existing
        store.create(_index_key(record), b"")  # the first upload's entry, should its writer have died before it
        if _index_key(record) != entry:
            store.delete(entry)  # this repeat's own entry points at a record filed under another time
    return StoredReport(record, created)


def read_report(store: ObjectStore, kind: Kind, report: str) -> dict[str, Any] | None:
    return read_json(store, record_key(kind, report))


def _token(entry: str) -> str:
    return base64.urlsafe_b64encode(entry.encode("ascii")).decode("ascii").rstrip("=")


def _entry(token: str) -> str:
    try:
        entry = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        entry = ""
    if not _INDEX_ENTRY.fullmatch(entry):
        raise BadRequest("continuationToken is not one this service returned", code="invalid_token")
    return entry


@dataclass(frozen=True)
class ReportPage:
    records: list[dict[str, Any]]
    continuation_token: str | None


def list_reports(store: ObjectStore, kind: Kind, gateway_id: str, limit: int, token: str | None) -> ReportPage:
    """Newest first; `token` (from the previous page) resumes after the last entry it returned."""
    prefix = _index_prefix(kind, gateway_id)
    keys = store.list(prefix, after=None if token is None else prefix + _entry(token), limit=limit + 1)
    page = keys[:limit]
    records = []
    for key in page:
        record = read_report(store, kind, key.rpartition("-")[2])
        # An entry whose record is missing (its writer died first) or is filed under another time (a repeat's
        # entry, left by a writer that died before deleting it) is not this report's listing: skip it.
        if record is not None and _index_key(record) == key:
            records.append(record)
    more = len(keys) > limit
    return ReportPage(records, _token(page[-1][len(prefix) :]) if more else None)
