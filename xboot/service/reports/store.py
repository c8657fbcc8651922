"""Stored reports: one record per signed report, and two indexes that list them newest or oldest first.

`reports/<kind>/<id>.json` holds the record (report, verification result, the signed
message as received). Its id comes from the signer certificate and the signed
attributes (which carry the content digest and signing time), so the same signed
report maps to the same record however it was transported, and `create` (atomic,
never overwrites) makes ingestion idempotent under concurrency.

Two empty markers name each record, so that every listing is a paged prefix listing (O(page)):
- `report-index/<kind>/<gateway>/<inverted day>/<inverted received ms>-<id>`: one gateway's reports,
  newest first;
- `report-time/<kind>/<YYYYMMDD>/<HH>/<MM>/<SS><mmm>-<id>`: every gateway's, by received time, oldest first.
The day, hour and minute segments keep each File-store folder small however long a gateway reports or
however large the fleet; on Blob they are just part of the name. The markers are written before the
record, so a crash in between leaves a marker without a record (listings skip it), never a stored
report no listing shows; the device got no answer and sends again.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization

from xboot.errors import BackendUnavailable, BadRequest
from xboot.service.reports.verify import Verification
from xboot.service.storage import ObjectStore, check_key, paging, read_json

Kind = Literal["system", "update"]
_INVERT_MS = 10**13  # inverted epoch milliseconds stay 13 digits until the year 2286
DAY_MS = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ID = re.compile(r"[0-9a-f]{32}")
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


def _time_prefix(kind: Kind) -> str:
    return f"report-time/{kind}/"


def _received(record: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(record["receivedAt"])


def _inverted_ms(record: dict[str, Any]) -> int:
    """Received time as inverted epoch milliseconds: ascending names list newest first."""
    return _INVERT_MS - (_received(record) - _EPOCH) // dt.timedelta(milliseconds=1)


def index_keys(record: dict[str, Any]) -> tuple[str, str]:
    """The record's two markers: its gateway's newest-first listing, and the fleet's by time."""
    inverted = _inverted_ms(record)
    gateway = _index_prefix(record["kind"], record["gatewayId"])
    by_gateway = f"{gateway}{inverted // DAY_MS:05d}/{inverted:013d}-{record['id']}"
    return by_gateway, f"{_time_key(record['kind'], _received(record))}{record['id']}"


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
    entries = [check_key(k) for k in index_keys(record)]
    for entry in entries:
        store.create(entry, b"", flush=False)  # durable with the record's flush, just below
    created = store.create(key, json.dumps(record, indent=1).encode("utf-8"))
    if not created:
        existing = read_json(store, key)
        if existing is None:  # created and deleted in between: nothing deletes records, so storage is misbehaving
            raise BackendUnavailable("report storage is inconsistent; retry")
        record = existing
        originals = index_keys(record)
        for original, entry in zip(originals, entries, strict=True):
            if original != entry:
                store.create(original, b"")  # the first upload's marker, should its writer have died before it
                store.delete(entry)  # this repeat's own marker points at a record filed under another time
    return StoredReport(record, created)


def read_report(store: ObjectStore, kind: Kind, report: str) -> dict[str, Any] | None:
    return read_json(store, record_key(kind, report))


@dataclass(frozen=True)
class ReportPage:
    records: list[dict[str, Any]]
    continuation_token: str | None


def legacy_key(record: dict[str, Any]) -> str:
    """The gateway marker of versions before the day folders (`<gateway>/<inverted ms>-<id>`). Those were all
    made before 2027, so their inverted milliseconds begin with 8, and they sort after every day folder
    (inverted days begin with 7 until 2052, lower after): where older reports belong in a newest-first
    listing. So they are listed as they are, with no migration."""
    return f"{_index_prefix(record['kind'], record['gatewayId'])}{_inverted_ms(record):013d}-{record['id']}"


def _listed(store: ObjectStore, kind: Kind, keys: list[str], position: int) -> list[dict[str, Any]]:
    """The records the markers name. A marker whose record is missing (its writer died first) or is filed
    under another time (a repeat's marker, left by a writer that died before deleting it) is skipped."""
    records = []
    for key in keys:
        record = read_report(store, kind, key.rpartition("-")[2])
        if record is None:
            continue
        named = {index_keys(record)[position]}
        if position == 0:
            named.add(legacy_key(record))  # a gateway marker an earlier version wrote
        if key in named:
            records.append(record)
    return records


def list_reports(store: ObjectStore, kind: Kind, gateway_id: str, limit: int, token: str | None) -> ReportPage:
    """One gateway's, newest first; `token` (from the previous page) resumes where it ended."""
    found, following = paging.page(store, _index_prefix(kind, gateway_id), limit, token)
    return ReportPage(_listed(store, kind, found.keys, 0), following)


HOUR = dt.timedelta(hours=1)


def _time_key(kind: Kind, when: dt.datetime) -> str:
    when = when.astimezone(dt.UTC)
    return f"{_time_prefix(kind)}{when:%Y%m%d/%H/%M/%S}{when.microsecond // 1000:03d}-"


def list_fleet_reports(
    store: ObjectStore, kind: Kind, since: dt.datetime, until: dt.datetime, limit: int, token: str | None
) -> ReportPage:
    """Every gateway's reports received in [since, until), oldest first, one hour's prefix after another.

    O(limit) work per page whatever the fleet's size; a page may hold fewer than `limit` reports
    (a sparse range): follow the token, sent with the same `since` and `until`.
    """
    first = since.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    low, high = _time_key(kind, since), _time_key(kind, until)

    def hour(position: int) -> str | None:
        start = first + position * HOUR
        return f"{_time_prefix(kind)}{start:%Y%m%d/%H}/" if start < until else None

    scope = f"fleet\x00{kind}\x00{since.isoformat()}\x00{until.isoformat()}"
    keys, following = paging.walk(store, hour, limit, token, scope, lambda key: low <= key < high)
    return ReportPage(_listed(store, kind, keys, 1), following)
