"""Markers for records stored before they existed: one pass over the audit log and the reports, after an upgrade.

Versions before the fleet-scale indexes wrote no serial or expiry marker per certificate and no by-time
marker per report, so those records are missing from the fleet-wide listings and revocation by serial
cannot name their device. `xboot reindex` writes what is missing (and replaces a report's old flat gateway
marker, which listings still read, by its day-folder one). It reads every record once (O(n), which is
why no request ever does it), pages through the store, and is idempotent: markers are written with
`create`, so running it twice, or while the service runs, changes nothing that is there.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

from xboot.service.lifecycle.audit import AUDIT_PREFIX, write_markers
from xboot.service.reports.store import index_keys, legacy_key
from xboot.service.storage import ObjectStore, read_json

PAGE = 1000
DONE = "meta/reindex.json"


@dataclass(frozen=True)
class Reindexed:
    certificates: int
    reports: int
    skipped: int  # records without what a marker needs (no readable notAfter, receivedAt or gatewayId)


def _keys(store: ObjectStore, prefix: str) -> Iterator[str]:
    """Every key under `prefix`, a page at a time (a million records are never held at once)."""
    marker = None
    while True:
        page = store.page(prefix, PAGE, marker)
        yield from page.keys
        marker = page.marker
        if marker is None:
            return


def reindex(store: ObjectStore, now: dt.datetime) -> Reindexed:
    certificates = reports = skipped = 0
    for key in _keys(store, AUDIT_PREFIX):
        record = read_json(store, key)
        try:
            serial, registration_id = str(record["serialNumber"]), str(record["registrationId"])  # type: ignore[index]
            not_after = dt.datetime.fromisoformat(str(record["notAfter"]))  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            skipped += 1
            continue
        write_markers(store, serial, registration_id, not_after)
        certificates += 1
    for kind in ("system", "update"):
        for key in _keys(store, f"reports/{kind}/"):
            record = read_json(store, key)
            try:
                markers = index_keys(record)  # type: ignore[arg-type]
            except (TypeError, KeyError, ValueError):
                skipped += 1
                continue
            for marker in markers:
                store.create(marker, b"", flush=False)
            store.delete(legacy_key(record))  # type: ignore[arg-type]  # else listed twice; after the new one
            reports += 1
    done = Reindexed(certificates, reports, skipped)
    summary = {"at": now.isoformat(), **done.__dict__}
    store.replace(DONE, json.dumps(summary).encode())  # flushed: every marker above is durable with it
    return done
