"""One registration ID, one device: the identity lock, the daily certificate limit, and superseding on renewal.

All three read the device's own audit records (a prefix listing, O(its certificates), never the fleet):
- `IdentityLock` (default true): while the ID holds a valid certificate (unexpired, not revoked), only a
  renewal proved by a certificate of that ID may enroll it: anything else is 409 `identity_exists`.
- `MaxCertificatesPerDay` (default 10; 0 = no limit): more in 24 hours is 429 `rate_limited` with Retry-After.
- A renewal supersedes: the ID's other unexpired certificates are revoked (reason superseded) once
  `SupersededGraceHours` (default 24; 0 = at once) has passed, and then appear in the CRL.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from xboot.errors import BackendUnavailable, Conflict, TooManyRequests
from xboot.pki import PublicKey
from xboot.service.enrollment.authorization import Grant
from xboot.service.lifecycle.audit import audit_prefix
from xboot.service.lifecycle.revocation import key_hash, load_revocations, record_key_hash, supersede
from xboot.service.settings import Settings
from xboot.service.storage import ObjectStore, read_json

log = logging.getLogger(__name__)

DAY = dt.timedelta(days=1)


def _time(record: dict[str, Any], name: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(record[name]))
    except (KeyError, ValueError):
        raise BackendUnavailable(f"audit record of {record.get('registrationId')!r} has no readable {name}") from None


def history(store: ObjectStore, registration_id: str) -> list[dict[str, Any]]:
    """Every audit record of this registration ID."""
    records = (read_json(store, key) for key in store.list(audit_prefix(registration_id)))
    return [record for record in records if record is not None]


def check_identity(
    registration_id: str, key: PublicKey, grant: Grant, store: ObjectStore, settings: Settings, now: dt.datetime
) -> list[dict[str, Any]]:
    """Refuse what the lock and the limit forbid; the device's records, for `supersede_predecessors`.

    A CSR for the key of the ID's valid certificate is its holder asking again (its first answer was
    lost, or it rejected it): proof of possession of that key is the proof a renewal gives.
    """
    limit = settings.integer("MaxCertificatesPerDay", 10, minimum=0, maximum=1_000_000)
    locked = grant.renewal_of is None and settings.boolean("IdentityLock", True)
    if not locked and limit == 0 and grant.renewal_of is None:
        return []  # XBoot's behaviour (no lock, no limit): nothing to read
    wanted = key_hash(key)
    records = history(store, registration_id)
    recent = sorted(t for t in (_time(r, "issuedAt") for r in records) if t > now - DAY)
    if limit and len(recent) >= limit:
        wait = recent[len(recent) - limit] + DAY - now
        raise TooManyRequests(
            f"registration {registration_id} was issued {len(recent)} certificates in 24 hours "
            f"(MaxCertificatesPerDay {limit}); try again later",
            retry_after=max(1, int(wait.total_seconds()) + 1),
        )
    if locked:
        revocations = load_revocations(settings)
        for record in records:
            if _time(record, "notAfter") <= now or revocations.for_record(record, now) is not None:
                continue
            if record_key_hash(record) == wanted:
                continue  # the holder of that certificate's key asking again (a lost response): not another device
            raise Conflict(
                f"registration {registration_id} already holds a valid certificate "
                f"(serial {record.get('serialNumber')}): renew with it (xboot renew signs with the current "
                "certificate), or have an operator revoke the lost certificate by serial to free the ID",
                code="identity_exists",
            )
    return records


def supersede_predecessors(
    records: list[dict[str, Any]], renewed_serial: str, settings: Settings, now: dt.datetime
) -> None:
    """After a renewal: the ID's other unexpired, unrevoked certificates are superseded after the grace."""
    grace = dt.timedelta(hours=settings.integer("SupersededGraceHours", 24, minimum=0, maximum=8760))
    revocations = load_revocations(settings)
    for record in records:
        if str(record.get("serialNumber")) == renewed_serial or _time(record, "notAfter") <= now:
            continue
        if revocations.for_record(record, now + grace) is None:
            entry = supersede(settings, record, now + grace, now)
            log.info("certificate %s of %s superseded from %s", record.get("serialNumber"),
                     record.get("registrationId"), entry.revoked_at.isoformat())  # fmt: skip
