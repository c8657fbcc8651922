"""Device lifecycle endpoints: revocations, what a device was issued, and the CRL. Plain data in, `ApiResponse` out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from xboot.errors import BadRequest
from xboot.service.ca import crl, issuers
from xboot.service.enrollment.registration import validate_registration_id
from xboot.service.http.edge import ApiResponse, field_ci, json_object, page_size
from xboot.service.lifecycle import revocation
from xboot.service.lifecycle.audit import EXPIRY_PREFIX, audit_key, audit_prefix, expiry_key, parse_marker
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store, paging, read_json
from xboot.service.untrusted import whole_number

SELECTORS = ("serialNumber", "fingerprint", "registrationId", "certificate")
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def revoke(body: bytes, settings: Settings, now: dt.datetime | None = None) -> ApiResponse:
    """201 with the new entry; 200 if the same thing was already revoked for the same reason (a retry)."""
    request = json_object(body)
    values = {name: field_ci(request, name) for name in SELECTORS}
    given = [(name, value) for name, value in values.items() if value is not None]
    if len(given) != 1:
        raise BadRequest(f"send exactly one of {', '.join(SELECTORS)}, and a reason", code="invalid_revocation")
    reason = revocation.normalize_reason(field_ci(request, "reason"))
    selector, value = given[0]
    entry, created = revocation.revoke(settings, selector, value, reason, now or dt.datetime.now(dt.UTC))
    document = {**entry.to_json(), "duplicate": not created}
    # an upstream that signed this CA's serials is told too where it has an API (CFSSL); a retry re-sends
    forwarded = issuers.resolve(settings).forward_revocation(entry.serial_numbers, entry.issuer, reason, settings)
    if forwarded is not None:
        document["upstream"] = forwarded.to_json()
    return ApiResponse(
        201 if created else 200,
        document,
        headers={"Location": f"/api/mgmt/v1/revocations/{entry.id}"},
    )


def list_revocations(query: Mapping[str, str], settings: Settings) -> ApiResponse:
    """Oldest first; `continuationToken` is the last id of the previous page."""
    limit = page_size(query.get("limit"), DEFAULT_PAGE, MAX_PAGE)
    after = query.get("continuationToken") or None
    if after is not None and not revocation.is_revocation_id(after):
        raise BadRequest("continuationToken is not one this service returned", code="invalid_token")
    entries = revocation.load_revocations(settings, fresh=True).after(after, limit + 1)
    page = entries[:limit]
    return ApiResponse(
        200,
        {
            "revocations": [e.to_json() for e in page],
            "continuationToken": page[-1].id if len(entries) > limit else None,
        },
    )


def remove_revocation(revocation_id: str, settings: Settings) -> ApiResponse:
    entry = revocation.remove(settings, revocation_id)
    return ApiResponse(200, {**entry.to_json(), "removed": True})


def _expired(not_after: object, now: dt.datetime) -> bool | None:
    try:
        return dt.datetime.fromisoformat(str(not_after)) <= now
    except ValueError:
        return None


def _certificate(record: Mapping[str, Any], hit: revocation.Revocation | None, now: dt.datetime) -> dict[str, Any]:
    not_after = record.get("notAfter")
    return {
        "serialNumber": record.get("serialNumber"),
        "sha256Fingerprint": record.get("sha256Fingerprint"),
        "subject": record.get("subject"),
        "notBefore": record.get("notBefore"),
        "notAfter": not_after,
        "issuedAt": record.get("issuedAt"),
        "expired": _expired(not_after, now),
        "revoked": hit is not None,
        "revocation": None if hit is None else hit.summary(),
    }


STATUSES = ("valid", "expired", "revoked")
MAX_DAYS = 36_600  # a hundred years: every validity this service can issue


def list_certificates(query: Mapping[str, str], settings: Settings) -> ApiResponse:
    """One device's audit log by serial (`registrationId`), or the fleet's certificates by notAfter."""
    if not query.get("registrationId"):
        return _fleet_certificates(query, settings)
    registration_id = validate_registration_id(query["registrationId"])
    limit = page_size(query.get("limit"), DEFAULT_PAGE, MAX_PAGE)
    store = open_data_store(settings)
    found, following = paging.page(store, audit_prefix(registration_id), limit, query.get("continuationToken") or None)
    revocations = revocation.load_revocations(settings, fresh=True)
    now = dt.datetime.now(dt.UTC)
    items = []
    for key in found.keys:
        record = read_json(store, key)
        if record is not None:
            items.append(_certificate(record, revocations.for_record(record), now))
    held = revocations.by_registration.get(registration_id.lower())
    return ApiResponse(
        200,
        {
            "registrationId": registration_id,
            "registrationRevoked": None if held is None else held.summary(),
            "certificates": items,
            "continuationToken": following,
        },
    )


def _fleet_certificates(query: Mapping[str, str], settings: Settings) -> ApiResponse:
    """Every device's certificates, soonest notAfter first; `expiringWithinDays` keeps those valid now that
    expire within that many days, `status` one state. O(limit) per page; a filtered page may be short."""
    limit = page_size(query.get("limit"), DEFAULT_PAGE, MAX_PAGE)
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}", code="invalid_query")
    days_text = query.get("expiringWithinDays")
    days = None if days_text is None else whole_number(days_text)
    if days_text is not None and (days is None or days > MAX_DAYS):
        raise BadRequest(f"expiringWithinDays must be a whole number from 0 to {MAX_DAYS}", code="invalid_query")
    now = dt.datetime.now(dt.UTC)
    store = open_data_store(settings)
    token = query.get("continuationToken") or None
    scope = f"fleet\x00{status}\x00{days}"
    if days is None:
        found, following = paging.page(store, EXPIRY_PREFIX, limit, token, scope)
        keys = found.keys
    else:
        # From now: a certificate that expires while an operator pages through drops out of later pages.
        start, end = now, now + dt.timedelta(days=days)
        low, high = expiry_key(start, "", ""), expiry_key(end, "", "")

        def day(position: int) -> str | None:
            when = (start + dt.timedelta(days=position)).date()
            return f"{EXPIRY_PREFIX}{when:%Y%m%d}/" if when <= end.date() else None

        keys, following = paging.walk(store, day, limit, token, scope, lambda key: low <= key < high)
    revocations = revocation.load_revocations(settings, fresh=True)
    items = []
    for key in keys:
        marker = parse_marker(key)
        record = read_json(store, audit_key(marker[1], marker[0])) if marker is not None else None
        if record is None:
            continue  # a marker whose record was never written (its writer died first)
        item = {
            "registrationId": record.get("registrationId"),
            **_certificate(record, revocations.for_record(record), now),
        }
        state = "revoked" if item["revoked"] else "expired" if item["expired"] else "valid"
        if status is None or status == state:
            items.append(item)
    return ApiResponse(200, {"certificates": items, "continuationToken": following})


def get_crl(settings: Settings) -> ApiResponse:
    """DER, as RFC 5280 section 4.2.1.13 HTTP distribution points serve it; caches may keep it as long as we do."""
    published = crl.published_crl(settings)
    return ApiResponse(
        200,
        published.der,
        headers={"Cache-Control": f"public, max-age={revocation.cache_seconds(settings)}"},
        content_type=crl.MIME,
    )
