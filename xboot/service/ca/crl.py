"""The CRL: the revocation list as RFC 5280 publishes it, signed by the issuing CA, served at `GET /api/crl`.

Every CRL built is kept as `crl/<CRL number, 20 digits>.json` (the DER plus what decides whether it is
still current), written with `create`: the object name is the CRL number, so two instances building at
once cannot publish the same number, and the newest CRL is the highest name. A CRL is rebuilt on the
first request after the revocation list changed, after the CA or `CrlValidityHours` changed, or once
it is half way to its nextUpdate; otherwise every instance serves the stored one.

A registration-ID entry covers every certificate issued to that ID, including any that an instance
whose list was still up to `RevocationCacheSeconds` old issued just after the revocation. So its
serial numbers are looked up again at each build until that window (plus `IN_FLIGHT_SECONDS` for
enrollments already under way) has passed, and a CRL built inside the window is rebuilt after it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from xboot.errors import BackendUnavailable
from xboot.service.ca.issuers import require_local
from xboot.service.ca.signer import Signer, load_signer
from xboot.service.lifecycle.audit import audit_prefix
from xboot.service.lifecycle.revocation import (
    REASONS,
    SERIAL,
    RevocationList,
    cache_seconds,
    in_effect,
    load_revocations,
)
from xboot.service.settings import Settings
from xboot.service.storage import ObjectStore, PerStore, open_data_store, read_json

log = logging.getLogger(__name__)

PREFIX = "crl/"
MIME = "application/pkix-crl"
DEFAULT_VALIDITY_HOURS = 24
BACKDATE = dt.timedelta(minutes=5)  # thisUpdate a little in the past: verifiers' clocks drift
IN_FLIGHT_SECONDS = 120  # an enrollment that passed its revocation check has written its audit record by then
KEEP = 3  # CRL objects kept: the current one and a few before it
_CLAIM_ATTEMPTS = 5
_KEY = re.compile(r"crl/[0-9]{20}\.json")


@dataclass(frozen=True)
class Registration:
    serial_numbers: tuple[str, ...]  # the device's certificates issued by `issuer`
    settled: bool  # listed after every instance's cache had the entry: no certificate can be added any more
    issuer: str | None = None  # the CA (SHA-256 fingerprint) the serials were resolved for
    not_after: dt.datetime | None = None  # when the last of them expires (None: not known)


@dataclass(frozen=True)
class PublishedCrl:
    number: int
    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime
    refresh_at: dt.datetime
    source: str  # what it was built from: list digest, CA fingerprint, validity
    registrations: dict[str, Registration]

    @property
    def key(self) -> str:
        return crl_key(self.number)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "thisUpdate": self.this_update.isoformat(),
            "nextUpdate": self.next_update.isoformat(),
            "refreshAt": self.refresh_at.isoformat(),
            "source": self.source,
            "registrations": {
                i: {
                    "serialNumbers": list(r.serial_numbers),
                    "settled": r.settled,
                    "issuer": r.issuer,
                    "notAfter": None if r.not_after is None else r.not_after.isoformat(),
                }
                for i, r in self.registrations.items()
            },
            "crl": base64.b64encode(self.der).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: bytes, key: str) -> PublishedCrl | None:
        try:
            document = json.loads(data)
            published = cls(
                number=int(document["number"]),
                der=base64.b64decode(document["crl"], validate=True),
                this_update=dt.datetime.fromisoformat(document["thisUpdate"]),
                next_update=dt.datetime.fromisoformat(document["nextUpdate"]),
                refresh_at=dt.datetime.fromisoformat(document["refreshAt"]),
                source=str(document["source"]),
                registrations={
                    str(i): Registration(
                        tuple(r["serialNumbers"]),
                        bool(r["settled"]),
                        r.get("issuer"),
                        None if r.get("notAfter") is None else dt.datetime.fromisoformat(r["notAfter"]),
                    )
                    for i, r in document["registrations"].items()
                },
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            published = None
        if published is None or published.key != key:
            log.warning("stored CRL %s is unreadable; a new one will be built", key)
            return None
        return published

    def current(self, source: str, now: dt.datetime) -> bool:
        return self.source == source and now < self.refresh_at


def crl_key(number: int) -> str:
    return f"{PREFIX}{number:020d}.json"


def validity_hours(settings: Settings) -> int:
    return settings.integer("CrlValidityHours", DEFAULT_VALIDITY_HOURS, minimum=1, maximum=8784)


class _Latest:
    """The newest stored CRL of one data store, re-checked at most every RevocationCacheSeconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # also serialises building on this instance
        self.crl: PublishedCrl | None = None
        self.checked_key: str | None = None
        self.expires = 0.0

    def get(self, store: ObjectStore, ttl: int, fresh: bool) -> PublishedCrl | None:
        if not fresh and time.monotonic() < self.expires:
            return self.crl
        newer = [
            k for k in store.list(PREFIX) if _KEY.fullmatch(k) and (self.checked_key is None or k > self.checked_key)
        ]
        if newer:
            data = store.read(newer[-1])
            self.checked_key = newer[-1]
            self.crl = PublishedCrl.from_json(data, newer[-1]) if data is not None else None
        self.expires = time.monotonic() + ttl
        return self.crl

    def set(self, crl: PublishedCrl, ttl: int) -> None:
        self.crl, self.checked_key, self.expires = crl, crl.key, time.monotonic() + ttl

    @property
    def number(self) -> int:
        """The newest CRL number in the store, from its object name: readable or not, the next one is higher."""
        return 0 if self.checked_key is None else int(self.checked_key[len(PREFIX) :].removesuffix(".json"))


_latest = PerStore(_Latest)


def _source(revocations: RevocationList, signer: Signer, hours: int, now: dt.datetime) -> str:
    """What a CRL answers for; it changes when an entry is added or removed, or a pending one takes effect."""
    return f"{revocations.digest}:{revocations.pending(now)}:{signer.fingerprint}:{hours}h"


def published_crl(settings: Settings, now: dt.datetime | None = None) -> PublishedCrl:
    """The current CRL; built (and signed) only when the stored one no longer answers for the list."""
    now = now or dt.datetime.now(dt.UTC)
    require_local(settings, "CRL")
    store = open_data_store(settings)
    signer = load_signer(settings)
    signer.require_crl_sign("sign the CRL served at /api/crl")
    ttl = cache_seconds(settings)
    hours = validity_hours(settings)
    latest = _latest.get(store)
    crl = latest.get(store, ttl, fresh=False)
    if crl is not None and crl.current(_source(load_revocations(settings), signer, hours, now), now):
        return crl
    with latest.lock:
        # Something looks out of date: read the list and the newest CRL afresh before building one, so
        # that an instance with an old list never publishes it over a newer one.
        revocations = load_revocations(settings, fresh=True)
        source = _source(revocations, signer, hours, now)
        crl = latest.get(store, ttl, fresh=True)
        if crl is not None and crl.current(source, now):
            return crl
        crl = _publish(store, signer, revocations, source, crl, latest.number + 1, hours, ttl, now)
        latest.set(crl, ttl)
        return crl


def _issued_by(record: dict[str, Any] | None, signer: Signer) -> bool:
    """An audit record of this CA: by fingerprint, or for records made before it was kept, by issuer name."""
    if record is None:
        return False
    recorded = record.get("issuerSha256Fingerprint")
    return recorded == signer.fingerprint if recorded is not None else record.get("issuer") == signer.subject_text


def _not_after(record: dict[str, Any]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(record["notAfter"]))
    except (KeyError, ValueError):
        return None


def _registrations(
    store: ObjectStore,
    signer: Signer,
    revocations: RevocationList,
    previous: PublishedCrl | None,
    settle: dt.timedelta,
    now: dt.datetime,
) -> dict[str, Registration]:
    """Serials of this CA per registration-ID entry: from the previous CRL once settled (if it was resolved for
    this CA), else from the device's audit records now. A CRL lists only what the CA that signs it issued."""
    resolved = {}
    for entry in revocations.entries:
        if entry.kind != "registrationId":
            continue
        known = previous.registrations.get(entry.id) if previous is not None else None
        if known is not None and known.settled and known.issuer == signer.fingerprint:
            resolved[entry.id] = known
            continue
        prefix = audit_prefix(entry.value)
        keys = [key for key in store.list(prefix) if SERIAL.fullmatch(key[len(prefix) :].removesuffix(".json"))]
        records = [r for r in (read_json(store, key) for key in keys) if r is not None and _issued_by(r, signer)]
        expiries = [_not_after(r) for r in records]
        resolved[entry.id] = Registration(
            tuple(str(r["serialNumber"]) for r in records),
            now >= entry.revoked_at + settle,
            signer.fingerprint,
            None if not expiries or None in expiries else max(e for e in expiries if e is not None),
        )
    return resolved


def _expired(not_after: dt.datetime | None, now: dt.datetime) -> bool:
    return not_after is not None and not_after < now


_EntryKey = tuple[str, dt.datetime, x509.ReasonFlags]


class _BuiltEntries:
    """The last CRL's entries, kept built: a rebuild after one change builds one entry, not every one
    (building is most of a large CRL's cost). Holds only the entries of the last CRL built."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[_EntryKey, x509.RevokedCertificate] = {}

    def of(self, revoked: dict[str, tuple[dt.datetime, x509.ReasonFlags]]) -> list[x509.RevokedCertificate]:
        with self.lock:
            previous, current = self.entries, dict[_EntryKey, x509.RevokedCertificate]()
            for serial, (revoked_at, reason) in revoked.items():
                key = (serial, revoked_at, reason)
                entry = previous.get(key)
                if entry is None:
                    builder = (
                        x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(revoked_at)
                    )
                    if reason is not x509.ReasonFlags.unspecified:  # RFC 5280 5.3.1: omit rather than say unspecified
                        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
                    entry = builder.build()
                current[key] = entry
            self.entries = current
            return list(current.values())


_built_entries = _BuiltEntries()


def build_crl(
    signer: Signer,
    revocations: RevocationList,
    registrations: dict[str, Registration],
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    now: dt.datetime,
) -> x509.CertificateRevocationList:
    """One CRL entry per serial in effect at `now`, dated and reasoned by the oldest revocation naming it.

    Certificates known to have expired are left out (RFC 5280 section 3.3 lets a CRL drop them once
    they expire), so the CRL holds what could still be presented, not the fleet's history.
    """
    revoked: dict[str, tuple[dt.datetime, x509.ReasonFlags]] = {}
    for entry in revocations.entries:
        if in_effect(entry, now) is None:
            continue  # a renewal's predecessor still in its grace: listed once the grace has passed
        registration = registrations.get(entry.id)
        extra = registration.serial_numbers if registration and not _expired(registration.not_after, now) else ()
        own = entry.serial_numbers if entry.issuer in (None, signer.fingerprint) else ()  # None: before issuers
        if _expired(entry.not_after, now):
            own = ()
        for serial in (*own, *extra):
            revoked.setdefault(serial, (entry.revoked_at, REASONS[entry.reason]))
    # Entries given to the constructor at once: add_revoked_certificate copies the list per call (O(n^2)).
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=_built_entries.of(revoked))
        .issuer_name(signer.certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(signer.authority_key_identifier, critical=False)
    )
    return signer.key.sign_crl(builder, signer.hash_algorithm)


def _publish(
    store: ObjectStore,
    signer: Signer,
    revocations: RevocationList,
    source: str,
    previous: PublishedCrl | None,
    number: int,
    hours: int,
    ttl: int,
    now: dt.datetime,
) -> PublishedCrl:
    settle = dt.timedelta(seconds=ttl + IN_FLIGHT_SECONDS)
    registrations = _registrations(store, signer, revocations, previous, settle, now)
    next_update = now + dt.timedelta(hours=hours)
    refresh_at = now + dt.timedelta(hours=hours) / 2
    for entry in revocations.entries:
        if entry.id in registrations and not registrations[entry.id].settled:
            refresh_at = min(refresh_at, entry.revoked_at + settle)
    for _ in range(_CLAIM_ATTEMPTS):
        crl = build_crl(signer, revocations, registrations, number, now - BACKDATE, next_update, now)
        published = PublishedCrl(
            number=number,
            der=crl.public_bytes(Encoding.DER),
            this_update=now - BACKDATE,
            next_update=next_update,
            refresh_at=refresh_at,
            source=source,
            registrations=registrations,
        )
        if store.create(published.key, json.dumps(published.to_json()).encode()):
            log.info("published CRL %d with %d entries", number, len(crl))
            _prune(store)
            return published
        data = store.read(published.key)  # another instance published this number first
        theirs = PublishedCrl.from_json(data, published.key) if data is not None else None
        if theirs is not None and theirs.current(source, now):
            return theirs
        number += 1
    raise BackendUnavailable("could not claim a CRL number; retry")


def _prune(store: ObjectStore) -> None:
    for key in [k for k in store.list(PREFIX) if _KEY.fullmatch(k)][:-KEEP]:
        store.delete(key)
